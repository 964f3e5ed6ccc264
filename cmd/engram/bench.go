package main

import (
	"context"
	"os"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench"
)

// benchCmd is `engram bench`: generate, replay, load, redrive, compare
// (package bench holds the tools; see bench/README.md). Memory is given
// back as a serving process gives it (returnMemory), and a replay runs the
// GC as `engram serve` does (setGC), so that a replay's CPU and RSS are
// those of a server's rebuild at start.
func benchCmd(args []string) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go returnMemory(ctx)
	return bench.Main(args, os.Stdout, os.Stderr, func(target int64) { setGC(target, os.LookupEnv, zerolog.Nop()) })
}
