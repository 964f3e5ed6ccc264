package main

import (
	"crypto/rand"
	"testing"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/stateres/signing"
)

func testKey(t *testing.T) signing.Key {
	k, err := signing.GenerateKey(rand.Reader, "t")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testLoggerNop() zerolog.Logger { return zerolog.Nop() }
