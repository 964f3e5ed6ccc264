// Package bench is `engram bench`: replay-driven benchmarking of Engram
// and of any Matrix homeserver.
//
//	engram bench generate --out DIR --seed N --users U --rooms R --events E
//	engram bench replay   --log DIR
//	engram bench load     --url URL [--users K --rooms R --duration D --rate X --pid PID]
//	engram bench redrive  --log DIR --url URL --speed 1x|10x|max
//	engram bench media    --url URL [--size 200M --files 5 --pid PID]
//	engram bench compare  A.jsonl B.jsonl
//
// Every measurement is one JSON line on stdout (or appended to --json
// FILE) carrying the workload parameters, git commit, Go version and core
// count; a table for humans goes to stderr. See bench/README.md.
package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	"github.com/engram-hs/engram/bench/load"
	"github.com/engram-hs/engram/bench/media"
	"github.com/engram-hs/engram/bench/redrive"
	"github.com/engram-hs/engram/bench/replay"
	"github.com/engram-hs/engram/bench/report"
	englog "github.com/engram-hs/engram/log"
)

const usage = `Usage: engram bench <command> [flags]

Commands:
  generate  write a deterministic synthetic log (--out DIR --seed N --users U --rooms R --events E)
  replay    rebuild every projection from a log and time it (--log DIR)
  load      drive a Matrix homeserver through the client API (--url URL)
  redrive   re-drive a recorded log's client inputs against a server (--log DIR --url URL --speed 1x|10x|max)
  media     upload and download large files through a server's media API, with its RSS (--url URL --pid PID)
  compare   print the ratios of matching measurements of two runs (A.jsonl B.jsonl)

Run "engram bench <command> -h" for the flags of a command.
`

// Main runs `engram bench` with args (after "bench") and returns the exit
// code. serveMemory, when not nil, applies the memory settings `engram
// serve` runs under for a memory_target (0: the default), so that a replay
// rebuilds as a server's start does.
func Main(args []string, stdout, stderr io.Writer, serveMemory func(target int64)) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &cli{stdout: stdout, stderr: stderr, serveMemory: serveMemory, logger: zerolog.New(zerolog.ConsoleWriter{Out: stderr, NoColor: true}).Level(zerolog.WarnLevel).With().Timestamp().Logger()}
	var err error
	switch args[0] {
	case "generate":
		err = c.generate(ctx, args[1:])
	case "replay":
		err = c.replay(ctx, args[1:])
	case "load":
		err = c.load(ctx, args[1:])
	case "redrive":
		err = c.redrive(ctx, args[1:])
	case "media":
		err = c.media(ctx, args[1:])
	case "compare":
		err = c.compare(args[1:])
	default:
		fmt.Fprintf(stderr, "engram bench: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "engram bench %s: %v\n", args[0], err)
		return 1
	}
}

var errUsage = errors.New("usage")

type cli struct {
	stdout, stderr io.Writer
	logger         zerolog.Logger
	serveMemory    func(target int64) // see Main
}

func (c *cli) flags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("engram bench "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	jsonOut := fs.String("json", "", "append the JSON lines to this file instead of writing them to stdout")
	return fs, jsonOut
}

func (c *cli) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(c.stderr, "unexpected arguments: %v\n", fs.Args())
		return errUsage
	}
	return nil
}

// recorder writes JSON lines to --json FILE (appending) or stdout.
func (c *cli) recorder(bench string, params map[string]string, jsonOut string) (*report.Recorder, func(), error) {
	if jsonOut == "" {
		return report.NewRecorder(bench, params, c.stdout), func() {}, nil
	}
	f, err := os.OpenFile(jsonOut, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, nil, err
	}
	return report.NewRecorder(bench, params, f), func() { _ = f.Close() }, nil
}

func (c *cli) done(rec *report.Recorder) {
	fmt.Fprintln(c.stderr)
	report.Table(c.stderr, rec.Measurements())
}

func (c *cli) generate(ctx context.Context, args []string) error {
	fs, jsonOut := c.flags("generate")
	out := fs.String("out", "", "directory of the new log (must be empty or absent)")
	var o generate.Options
	fs.Int64Var(&o.Seed, "seed", 1, "random seed: the same seed and options give the same log")
	fs.IntVar(&o.Users, "users", 1000, "accounts")
	fs.IntVar(&o.Rooms, "rooms", 100, "rooms")
	fs.IntVar(&o.Events, "events", 100000, "log entries to write in total, setup included")
	fs.StringVar(&o.ServerName, "server-name", "bench.localhost", "server name of the generated users and events")
	fs.StringVar(&o.RoomVersion, "room-version", "", "room version (default: the server's default)")
	fs.IntVar(&o.LargeRooms, "large-rooms", 0, "large public rooms (default rooms/50, 1 to 5)")
	fs.Float64Var(&o.Rate, "rate", 20, "simulated entries per second of the synthetic clock")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(c.stderr, "--out DIR is required")
		return errUsage
	}
	o.Logger = c.logger
	o.Progress = func(done, target int) { fmt.Fprintf(c.stderr, "\rgenerated %d/%d entries", done, target) }
	res, err := generate.Run(ctx, *out, o)
	if err != nil {
		return err
	}
	o.RoomVersion = orDefault(o.RoomVersion, "default")
	rec, closeRec, err := c.recorder("generate", o.Params(), *jsonOut)
	if err != nil {
		return err
	}
	defer closeRec()
	rec.Add("entries", float64(res.Entries), "entries", "")
	rec.Add("entries_per_s", float64(res.Entries)/res.Duration.Seconds(), "entries/s", report.HigherIsBetter)
	rec.Add("seconds", res.Duration.Seconds(), "s", report.LowerIsBetter)
	rec.Add("payload_mb", float64(res.PayloadBytes)/1e6, "MB", "")
	c.done(rec)
	digest, _, err := logDigest(*out, c.logger)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "log digest %s\nentries by kind %v\nevents by type %v\n", digest, res.ByKind, res.PDUsByType)
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (c *cli) replay(ctx context.Context, args []string) error {
	fs, jsonOut := c.flags("replay")
	dir := fs.String("log", "", "data directory holding the log (no server may run on it)")
	var names multiFlag
	fs.Var(&names, "projection", "projection to rebuild (repeatable; default: all)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the rebuild to this file (go tool pprof)")
	memTarget := fs.Int64("memory-target-mb", 0, "memory budget of the log's storage caches in MB, as memory_target (0: the server's default)")
	serverName := fs.String("server-name", replay.DefaultServerName, "server the projections are folded for; the generator's (bench.localhost) makes its users local, so notifications evaluate their push rules")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		fmt.Fprintln(c.stderr, "--log DIR is required")
		return errUsage
	}
	if c.serveMemory != nil {
		c.serveMemory(*memTarget << 20)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rec, closeRec, err := c.recorder("replay", map[string]string{}, *jsonOut)
	if err != nil {
		return err
	}
	defer closeRec()
	last := time.Time{}
	res, err := replay.Run(ctx, replay.Options{Dir: *dir, MemoryTarget: *memTarget << 20, Projections: names, ServerName: *serverName, Logger: c.logger, Progress: func(name string, applied, target uint64) {
		if time.Since(last) > 500*time.Millisecond || applied == target {
			last = time.Now()
			fmt.Fprintf(c.stderr, "\r%-12s %d/%d", name, applied, target)
		}
	}}, rec)
	if err != nil {
		return err
	}
	c.done(rec)
	for _, p := range res.Projections {
		fmt.Fprintf(c.stderr, "digest %-12s %s\n", p.Name, p.Digest)
	}
	return nil
}

func (c *cli) load(ctx context.Context, args []string) error {
	fs, jsonOut := c.flags("load")
	var o load.Options
	fs.StringVar(&o.URL, "url", "", "client API base URL of the homeserver, e.g. http://127.0.0.1:8008")
	fs.IntVar(&o.Users, "users", 10, "sending users")
	fs.IntVar(&o.Rooms, "rooms", 2, "rooms (each with one syncing receiver)")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send")
	fs.Float64Var(&o.Rate, "rate", 0, "target sends per second over all users (0: as fast as answers come)")
	fs.IntVar(&o.MaxSends, "max-sends", 1000000, "stop after this many sends")
	fs.IntVar(&o.PID, "pid", 0, "process ID of the server, to report its RSS (Linux)")
	fs.IntVar(&o.BodySize, "body-size", 64, "message body size in bytes")
	fs.IntVar(&o.Syncers, "syncers", 0, "extra users long-polling /sync as clients do during the run (0: none)")
	fs.IntVar(&o.SyncerRooms, "syncer-rooms", 1, "rooms each syncer joins")
	fs.StringVar(&o.Prefix, "prefix", "", "username prefix (default: bench + random)")
	fs.StringVar(&o.DataDir, "data-dir", "", "the server's data directory, to report what it occupies on disk after the run")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if o.URL == "" {
		fmt.Fprintln(c.stderr, "--url is required")
		return errUsage
	}
	rec, closeRec, err := c.recorder("load", o.Params(), *jsonOut)
	if err != nil {
		return err
	}
	defer closeRec()
	if _, err := load.Run(ctx, o, rec); err != nil {
		return err
	}
	c.done(rec)
	return nil
}

func (c *cli) media(ctx context.Context, args []string) error {
	fs, jsonOut := c.flags("media")
	var o media.Options
	fs.StringVar(&o.URL, "url", "", "client API base URL of the homeserver (registration must be open)")
	size := fs.String("size", "200M", "bytes per file, or with a K, M or G suffix")
	fs.IntVar(&o.Files, "files", 5, "files uploaded one after another, then each downloaded")
	fs.IntVar(&o.PID, "pid", 0, "process ID of the server, to report its RSS (Linux)")
	fs.StringVar(&o.Prefix, "prefix", "", "username (default: benchmedia + random)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if o.URL == "" {
		fmt.Fprintln(c.stderr, "--url is required")
		return errUsage
	}
	n, err := parseBytes(*size)
	if err != nil {
		fmt.Fprintln(c.stderr, err)
		return errUsage
	}
	o.Size = n
	rec, closeRec, err := c.recorder("media", o.Params(), *jsonOut)
	if err != nil {
		return err
	}
	defer closeRec()
	res, err := media.Run(ctx, o, rec)
	if err != nil {
		return err
	}
	c.done(rec)
	if o.PID != 0 {
		verdict := "within"
		if res.GrowthMB() >= media.TargetGrowthMB {
			verdict = "OVER"
		}
		fmt.Fprintf(c.stderr, "server RSS growth %.1f MB: %s the %d MB target\n", res.GrowthMB(), verdict, media.TargetGrowthMB)
	}
	return nil
}

// parseBytes reads a size: bytes, or a number with a K, M or G suffix
// (powers of 1024).
func parseBytes(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--size %q: want a positive number of bytes, optionally with K, M or G", s)
	}
	return n * mult, nil
}

func (c *cli) redrive(ctx context.Context, args []string) error {
	fs, jsonOut := c.flags("redrive")
	var o redrive.Options
	fs.StringVar(&o.Dir, "log", "", "data directory holding the recorded log (no server may run on it)")
	fs.StringVar(&o.URL, "url", "", "client API base URL of the target homeserver (a fresh one)")
	speed := fs.String("speed", "max", "pace: 1x (as recorded), 10x, any Nx, or max")
	fs.IntVar(&o.Concurrency, "concurrency", 16, "requests in flight at most")
	fs.StringVar(&o.Password, "password", "", "password of the re-registered accounts (default none: no hashing cost on the target)")
	fs.StringVar(&o.Prefix, "prefix", "", "prefix for localparts and aliases (to redrive one log twice into one server)")
	fs.IntVar(&o.MaxEntries, "max-entries", 0, "stop after this many log entries (0: all)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if o.Dir == "" || o.URL == "" {
		fmt.Fprintln(c.stderr, "--log DIR and --url URL are required")
		return errUsage
	}
	sp, err := parseSpeed(*speed)
	if err != nil {
		fmt.Fprintln(c.stderr, err)
		return errUsage
	}
	o.Speed = sp
	o.Logger = c.logger
	rec, closeRec, err := c.recorder("redrive", o.Params(), *jsonOut)
	if err != nil {
		return err
	}
	defer closeRec()
	res, err := redrive.Run(ctx, o, rec)
	if err != nil {
		return err
	}
	c.done(rec)
	fmt.Fprintf(c.stderr, "requests by kind %v\nnot re-driven %v\n", res.Inputs, res.Skipped)
	if len(res.Errors) > 0 {
		fmt.Fprintf(c.stderr, "errors %v\n", res.Errors)
	}
	return nil
}

// parseSpeed reads "max", "1x", "10x", "2.5x".
func parseSpeed(s string) (float64, error) {
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "x"), 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("--speed %q: use max or a positive factor such as 1x or 10x", s)
	}
	return v, nil
}

func (c *cli) compare(args []string) error {
	fs := flag.NewFlagSet("engram bench compare", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(c.stderr, "usage: engram bench compare A.jsonl B.jsonl")
		return errUsage
	}
	a, err := report.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	b, err := report.ReadFile(fs.Arg(1))
	if err != nil {
		return err
	}
	if len(a) == 0 || len(b) == 0 {
		return fmt.Errorf("no measurements in %s or %s (JSON lines written by engram bench)", fs.Arg(0), fs.Arg(1))
	}
	ratios, missing := report.Compare(a, b)
	fmt.Fprintf(c.stdout, "A: %s (commit %s)\nB: %s (commit %s)\n", fs.Arg(0), shortCommit(a[0].Commit), fs.Arg(1), shortCommit(b[0].Commit))
	report.PrintRatios(c.stdout, ratios, missing)
	return nil
}

func shortCommit(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func logDigest(dir string, logger zerolog.Logger) (string, uint64, error) {
	node, err := englog.Open(englog.Config{Dir: dir, Logger: logger})
	if err != nil {
		return "", 0, err
	}
	defer node.Close()
	return generate.LogDigest(node)
}
