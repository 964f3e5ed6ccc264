package main

import (
	"context"
	"os"

	"github.com/engram-hs/engram/bench"
)

// benchCmd is `engram bench`: generate, replay, load, redrive, compare
// (package bench holds the tools; see bench/README.md). Memory is given
// back as a serving process gives it (returnMemory), so that a replay's
// RSS is what a server's rebuild at start holds.
func benchCmd(args []string) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go returnMemory(ctx)
	return bench.Main(args, os.Stdout, os.Stderr)
}
