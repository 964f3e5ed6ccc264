// Command engram is the Engram homeserver and its operator tools:
//
//	engram serve          run the server
//	engram register-user  create a user through shared-secret registration
//	engram admin          admin tasks on a running server (admin API)
//	engram rebuild        drop projections and replay them from the log
//	engram verify         check projections against a fresh replay
//	engram log            print log entries
//	engram cluster        cluster certificates (init, add-node)
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
)

const version = "0.1.0"

type command struct {
	name    string
	summary string
	run     func(args []string) int
}

func commands() []command {
	return []command{
		{"serve", "run the homeserver", serveCmd},
		{"register-user", "create a user on a running server (shared-secret registration)", registerUserCmd},
		{"admin", "admin tasks on a running server: list-users, list-rooms, make-admin, revoke-admin, reset-password, deactivate", adminCmd},
		{"rebuild", "drop projections and replay them from the log (server stopped)", rebuildCmd},
		{"verify", "compare every projection with a fresh replay of the log (server stopped)", verifyCmd},
		{"log", "print log entries: tail [-n N] | show OFFSET (server stopped)", logCmd},
		{"backup", "copy the log into DIR, incrementally, online: --to DIR | verify DIR", backupCmd},
		{"restore", "rebuild a data dir from a backup up to a point: --from DIR (--to-offset N | --to-time T) --data-dir NEW", restoreCmd},
		{"cluster", "cluster certificates: init | add-node (raft runs over mutual TLS)", clusterCmd},
		{"bench", "benchmarks: generate, replay, load, redrive, compare", benchCmd},
		{"version", "print the version", func([]string) int { fmt.Println("engram", version); return 0 }},
	}
}

func main() {
	os.Exit(dispatch(os.Args[1:]))
}

func dispatch(args []string) int {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "-v") {
		fmt.Println("engram", version)
		return 0
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:])
		}
	}
	fmt.Fprintf(os.Stderr, "engram: unknown command %q\n\n", args[0])
	usage(os.Stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: engram <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun \"engram <command> -h\" for the flags of a command.")
}

// configFlags are the flags every command that reads the configuration
// takes; serve adds the common keys.
type configFlags struct {
	fs     *flag.FlagSet
	config *string
	keys   map[string]*string // config key -> flag value
}

func newConfigFlags(name string, withKeys bool) *configFlags {
	fs := flag.NewFlagSet("engram "+name, flag.ContinueOnError)
	cf := &configFlags{
		fs:     fs,
		config: fs.String("config", "", "configuration file (YAML); default: <data_dir>/engram.yaml"),
		keys:   map[string]*string{},
	}
	cf.keys["data_dir"] = fs.String("data-dir", "", "data directory (key data_dir; default ./engram-data)")
	if withKeys {
		cf.keys["server_name"] = fs.String("server-name", "", "server name (key server_name)")
		cf.keys["listen"] = fs.String("listen", "", "client API address host:port (key listen)")
		cf.keys["federation_listen"] = fs.String("federation-listen", "", "federation HTTPS address host:port (key federation_listen)")
	}
	return cf
}

// set returns the keys whose flags were given on the command line.
func (cf *configFlags) set() map[string]string {
	out := map[string]string{}
	cf.fs.Visit(func(f *flag.Flag) {
		key := strings.ReplaceAll(f.Name, "-", "_")
		if p, ok := cf.keys[key]; ok {
			out[key] = *p
		}
	})
	return out
}

// loaded is a configuration ready to use.
type loaded struct {
	cfg      Config
	path     string
	warnings []string
	created  bool // the config file was written by this run

	acceptDataLoss bool // serve --accept-data-loss
}

// load finds and reads the configuration. Without --config it uses
// <data_dir>/engram.yaml; create (serve only) writes that file, with a new
// registration secret, when it does not exist.
func (cf *configFlags) load(create bool) (loaded, error) {
	flags := cf.set()
	path := *cf.config
	created := false
	if path == "" {
		dir := defaultConfig().DataDir
		if d, ok := os.LookupEnv(envName("data_dir")); ok && d != "" {
			dir = d
		}
		if d, ok := flags["data_dir"]; ok {
			dir = d
		}
		path = filepath.Join(dir, "engram.yaml")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if !create {
				return loaded{}, fmt.Errorf("no configuration: pass --config FILE, or start `engram serve` once to create %s", path)
			}
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return loaded{}, fmt.Errorf("creating the data directory: %w", err)
			}
			if err := writeFileAtomic(path, withFirstRunValues(defaultConfigFile(randomSecret()), flags), 0o600); err != nil {
				return loaded{}, fmt.Errorf("writing the default configuration: %w", err)
			}
			created = true
		}
		// The data directory given by flag or environment is where the
		// file is; the file says data_dir "." relative to itself.
		delete(flags, "data_dir")
	}
	cfg, warnings, err := loadConfig(path, os.LookupEnv, flags)
	if err != nil {
		return loaded{}, err
	}
	warnings = append(warnings, unknownEnv(os.Environ())...)
	return loaded{cfg: cfg, path: path, warnings: warnings, created: created}, nil
}

// newLogger logs human-readable lines to a terminal and JSON otherwise
// (for log collectors).
func newLogger(level string) zerolog.Logger {
	lvl, err := zerologLevel(level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	var w io.Writer = os.Stderr
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"}
	}
	// Millisecond timestamps: requests take milliseconds, and lines of one
	// second must keep their order when read back.
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00"
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

func zerologLevel(s string) (zerolog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return zerolog.DebugLevel, nil
	case "info", "":
		return zerolog.InfoLevel, nil
	case "warn", "warning":
		return zerolog.WarnLevel, nil
	case "error":
		return zerolog.ErrorLevel, nil
	}
	return zerolog.NoLevel, errForm
}

// selfCommand is how to run this binary again from the current directory,
// for the commands the server prints: "engram" when that is what the PATH
// finds, the path it was started by otherwise ("./engram"), and
// "go run ./cmd/engram" under go run (whose binary is temporary).
func selfCommand() string {
	self, err := os.Executable()
	if err != nil {
		return "engram"
	}
	if p, err := exec.LookPath("engram"); err == nil {
		if a, b := evalPath(p), evalPath(self); a == b {
			return "engram"
		}
	}
	if strings.Contains(self, string(filepath.Separator)+"go-build") {
		return "go run ./cmd/engram"
	}
	arg0 := os.Args[0]
	if !strings.ContainsRune(arg0, filepath.Separator) {
		return self
	}
	return arg0
}

func evalPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// parseFlags parses a command's flags; when it returns false the command
// exits with the code: 0 after -h (the usage was asked for), 2 for a
// wrong flag.
func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	return 0, true
}

// fail prints an error for the operator and returns the exit code.
func fail(code int, format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "engram: "+format+"\n", args...)
	return code
}
