package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// readPassword asks for a password without putting it on the command
// line (where shell history and ps would keep it): on a terminal it
// prompts twice with echo off; otherwise it reads the first line of
// standard input (`echo "$PW" | engram register-user ...`).
func readPassword(what string) (string, error) { return newLineReader().password(what) }

// lineReader reads passwords from standard input, one line each, so that
// a command needing two (engram admin reset-password) can be scripted.
type lineReader struct{ in *bufio.Reader }

func newLineReader() *lineReader { return &lineReader{bufio.NewReader(os.Stdin)} }

func (lr *lineReader) password(what string) (string, error) {
	if restore, ok := echoOff(os.Stdin); ok {
		defer restore()
		in := lr.in
		fmt.Fprintf(os.Stderr, "%s: ", what)
		pw, err := in.ReadString('\n')
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(os.Stderr, "%s (again): ", what)
		again, err := in.ReadString('\n')
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return "", err
		}
		if pw != again {
			return "", errors.New("the passwords differ")
		}
		return strings.TrimRight(pw, "\r\n"), nil
	}
	line, err := lr.in.ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("no password given: pass --password, type it at the prompt, or pipe it on standard input")
	}
	return strings.TrimRight(line, "\r\n"), nil
}
