//go:build !linux

package main

import "os"

// echoOff is not available here: the password is read as a line.
func echoOff(*os.File) (func(), bool) { return nil, false }
