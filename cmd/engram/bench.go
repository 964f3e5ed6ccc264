package main

import (
	"os"

	"github.com/engram-hs/engram/bench"
)

// benchCmd is `engram bench`: generate, replay, load, redrive, compare
// (package bench holds the tools; see bench/README.md).
func benchCmd(args []string) int { return bench.Main(args, os.Stdout, os.Stderr) }
