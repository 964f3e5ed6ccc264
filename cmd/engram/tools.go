package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
)

// registerUserCmd creates a user with Synapse's shared-secret registration
// (GET a nonce, POST an HMAC-SHA1 of it), as register_new_matrix_user does.
func registerUserCmd(args []string) int {
	cf := newConfigFlags("register-user", false)
	url := cf.fs.String("url", "", "server URL (default: http://<listen>)")
	user := cf.fs.String("user", "", "localpart of the new user (required)")
	password := cf.fs.String("password", "", "password of the new user (default: prompt, or the first line of standard input)")
	admin := cf.fs.Bool("admin", false, "make the user a server admin")
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	if *user == "" {
		return fail(2, "register-user needs --user")
	}
	if *password == "" {
		pw, err := readPassword("Password for " + *user)
		if err != nil {
			return fail(2, "%v", err)
		}
		if pw == "" {
			return fail(2, "the password is empty")
		}
		*password = pw
	}
	l, err := cf.load(false)
	if err != nil {
		return fail(2, "%v", err)
	}
	secret := l.cfg.RegistrationSharedSecret
	if secret == "" {
		return fail(2, "registration_shared_secret is not set in %s; set it and restart the server", l.path)
	}
	base := serverURL(l.cfg, *url)
	client := &http.Client{Timeout: 30 * time.Second}

	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := doJSON(client, "GET", base+"/_synapse/admin/v1/register", nil, &nonce); err != nil {
		return fail(1, "getting a registration nonce from %s (is the server running?): %v", base, err)
	}
	mac := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if *admin {
		role = "admin"
	}
	mac.Write([]byte(nonce.Nonce + "\x00" + *user + "\x00" + *password + "\x00" + role))
	var out struct {
		UserID string `json:"user_id"`
	}
	req := map[string]any{"nonce": nonce.Nonce, "username": *user, "password": *password, "admin": *admin, "mac": hex.EncodeToString(mac.Sum(nil))}
	if err := doJSON(client, "POST", base+"/_synapse/admin/v1/register", req, &out); err != nil {
		return fail(1, "registering %q: %v", *user, err)
	}
	fmt.Printf("registered %s\n", out.UserID)
	return 0
}

func doJSON(c *http.Client, method, url string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	return json.Unmarshal(data, out)
}

// offline is the log, an engine and the API's projections registered on
// it, for the tools that run with the server stopped.
type offline struct {
	l      loaded
	logger zerolog.Logger
	node   *englog.Node
}

func openOffline(cf *configFlags) (*offline, error) {
	l, err := cf.load(false)
	if err != nil {
		return nil, err
	}
	// Tools print their own output; the logs only say what went wrong.
	logger := newLogger("warn")
	if lvl, _ := zerologLevel(l.cfg.LogLevel); lvl > zerolog.WarnLevel {
		logger = logger.Level(lvl)
	}
	node, err := openLogOffline(l.cfg, logger)
	if err != nil {
		return nil, err
	}
	return &offline{l: l, logger: logger, node: node}, nil
}

// engine returns an engine over db with every projection the server runs
// registered, and a function releasing both.
func (o *offline) engine(db *pebble.DB) (*projections.Engine, func(), error) {
	key, _, err := loadOrCreateSigningKey(o.l.cfg.SigningKeyPath)
	if err != nil {
		return nil, nil, err
	}
	e := projections.NewEngine(o.node, db, o.logger, nil)
	e.RebuildIn(rebuildDir(o.l.cfg))
	srv, _, err := newAPI(o.l.cfg, key, o.node, e, nil, o.logger, nil)
	if err != nil {
		return nil, nil, err
	}
	registerFederationProjections(e)
	return e, func() { srv.Close(); e.Close() }, nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func rebuildCmd(args []string) int {
	cf := newConfigFlags("rebuild", false)
	var names multiFlag
	cf.fs.Var(&names, "projection", "projection to rebuild (repeatable; default: all)")
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	o, err := openOffline(cf)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer o.node.Close()
	e, release, err := o.engine(o.node.DB())
	if err != nil {
		return fail(1, "%v", err)
	}
	defer release()
	bar := newProgressBar(os.Stderr)
	e.OnProgress(bar.update)
	ctx, cancel := signalContext()
	defer cancel()
	// The memory settings of a server's rebuild at start: an offline
	// rebuild keeps to the same memory_target.
	setGC(o.l.cfg.MemoryTarget, os.LookupEnv, o.logger)
	go returnMemory(ctx)
	started := time.Now()
	if err := e.Rebuild(ctx, names...); err != nil {
		bar.done()
		return fail(1, "rebuild: %v", err)
	}
	bar.done()
	fmt.Printf("rebuilt %d projection(s) up to log offset %d in %s\n", len(namesOr(names, e)), o.node.LastOffset(), time.Since(started).Round(time.Millisecond))
	// Compacted now, the rebuilt projections serve the next start at full
	// speed instead of paying for the compactions they owe.
	started = time.Now()
	if err := e.Settle(ctx, names...); err != nil {
		return fail(1, "rebuild: %v", err)
	}
	fmt.Printf("compacted them in %s\n", time.Since(started).Round(time.Millisecond))
	return 0
}

func namesOr(names []string, e *projections.Engine) []string {
	if len(names) > 0 {
		return names
	}
	for _, h := range e.Handles() {
		names = append(names, h.Name())
	}
	return names
}

// progressBar draws one line per projection on a terminal, redrawn at
// most every 100 ms.
type progressBar struct {
	w     io.Writer
	name  string
	last  time.Time
	shown bool
}

func newProgressBar(w io.Writer) *progressBar { return &progressBar{w: w} }

func (p *progressBar) update(name string, applied, target uint64) {
	if name != p.name {
		p.done()
		p.name = name
	}
	if time.Since(p.last) < 100*time.Millisecond && applied < target {
		return
	}
	p.last = time.Now()
	frac := 1.0
	if target > 0 {
		frac = float64(applied) / float64(target)
	}
	const width = 30
	filled := int(frac * width)
	fmt.Fprintf(p.w, "\r%-12s [%s%s] %3.0f%% %d/%d", name, strings.Repeat("#", filled), strings.Repeat(".", width-filled), frac*100, applied, target)
	p.shown = true
}

func (p *progressBar) done() {
	if p.shown {
		fmt.Fprintln(p.w)
		p.shown = false
	}
}

// verifyCmd catches the live projections up, replays the log into a
// temporary store, and compares digests: a difference means a projection
// is not a deterministic function of the log (a bug) or the store is
// damaged (run engram rebuild).
func verifyCmd(args []string) int {
	code, err := verifyRun(args)
	if err != nil {
		if pebble.IsCorruptionError(err) || errors.Is(err, englog.ErrCorrupt) {
			return fail(1, "DISK DAMAGE (not a bug in Engram): %v\nA file in the data directory failed its checksum; the error names it. If it holds only projection data, `engram rebuild` rebuilds that from the log; if `engram log tail` fails too, restore the data directory from a backup (engram restore)", err)
		}
		return fail(1, "%v", err)
	}
	return code
}

// verifyRun is verify; a failure it returns is classified by verifyCmd.
func verifyRun(args []string) (int, error) {
	cf := newConfigFlags("verify", false)
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code, nil
	}
	o, err := openOffline(cf)
	if err != nil {
		return 0, err
	}
	defer o.node.Close()
	// Every block of every table, checksums included: damage on disk is
	// named here, apart from a digest mismatch (a fold bug) below.
	if err := o.node.DB().CheckLevels(nil); err != nil {
		return 0, fmt.Errorf("checking every table of the data directory: %w", err)
	}
	ctx, cancel := signalContext()
	defer cancel()

	live, releaseLive, err := o.engine(o.node.DB())
	if err != nil {
		return 0, err
	}
	if err := live.Start(ctx); err != nil {
		releaseLive()
		return 0, fmt.Errorf("catching up the projections: %w", err)
	}
	last := o.node.LastOffset()
	liveDigests := map[string][]byte{}
	for _, h := range live.Handles() {
		err := h.WaitRebuilt(ctx)
		if err == nil {
			err = h.WaitApplied(ctx, last)
		}
		if err != nil {
			releaseLive()
			return 0, fmt.Errorf("catching up %s: %w", h.Name(), err)
		}
		d, err := live.Digest(h.Name())
		if err != nil {
			releaseLive()
			return 0, err
		}
		liveDigests[h.Name()] = d
	}
	releaseLive()

	tmp, err := os.MkdirTemp(o.l.cfg.DataDir, "verify-")
	if err != nil {
		return 0, fmt.Errorf("creating a temporary store: %w", err)
	}
	defer os.RemoveAll(tmp)
	db, err := pebble.Open(tmp, &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		return 0, fmt.Errorf("opening a temporary store: %w", err)
	}
	defer db.Close()
	fresh, releaseFresh, err := o.engine(db)
	if err != nil {
		return 0, err
	}
	defer releaseFresh()
	bar := newProgressBar(os.Stderr)
	fresh.OnProgress(bar.update)
	if err := fresh.Rebuild(ctx); err != nil {
		bar.done()
		return 0, fmt.Errorf("replaying the log: %w", err)
	}
	bar.done()
	mismatch := 0
	for _, h := range fresh.Handles() {
		d, err := fresh.Digest(h.Name())
		if err != nil {
			return 0, err
		}
		status := "ok"
		if !bytes.Equal(d, liveDigests[h.Name()]) {
			status = "MISMATCH"
			mismatch++
		}
		fmt.Printf("%-12s %-8s %x\n", h.Name(), status, d[:8])
	}
	if mismatch > 0 {
		return fail(1, "%d projection(s) differ from a fresh replay of the log at offset %d although every file passed its checksums: a projection is not a deterministic fold of the log (a bug); run `engram rebuild --projection NAME` and report the bug", mismatch, last), nil
	}
	fmt.Printf("all projections match a fresh replay of the log at offset %d\n", last)
	return 0, nil
}

type quietPebble struct{}

func (quietPebble) Infof(string, ...any)  {}
func (quietPebble) Errorf(string, ...any) {}
func (quietPebble) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", args...)
	os.Exit(1)
}

// logCmd prints log entries as JSON lines for operators.
func logCmd(args []string) int {
	cf := newConfigFlags("log", false)
	cf.fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: engram log [--config FILE] tail [-n N] | show OFFSET")
		cf.fs.PrintDefaults()
	}
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	rest := cf.fs.Args()
	if len(rest) == 0 {
		cf.fs.Usage()
		return 2
	}
	var from uint64
	var count int
	switch rest[0] {
	case "show":
		if len(rest) != 2 {
			return fail(2, "usage: engram log show OFFSET")
		}
		off, err := strconv.ParseUint(rest[1], 10, 64)
		if err != nil || off == 0 {
			return fail(2, "OFFSET must be a positive integer, got %q", rest[1])
		}
		from, count = off, 1
	case "tail":
		fs := flag.NewFlagSet("engram log tail", flag.ContinueOnError)
		n := fs.Int("n", 20, "number of newest entries to print")
		if code, ok := parseFlags(fs, rest[1:]); !ok {
			return code
		}
		if *n <= 0 {
			return fail(2, "-n must be positive")
		}
		count = *n
	default:
		cf.fs.Usage()
		return 2
	}
	o, err := openOffline(cf)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer o.node.Close()
	last := o.node.LastOffset()
	if rest[0] == "show" && from > last {
		return fail(1, "offset %d is past the end of the log (last offset %d)", from, last)
	}
	if rest[0] == "tail" {
		from = 1
		if last > uint64(count) {
			from = last - uint64(count) + 1
		}
	}
	out := json.NewEncoder(os.Stdout)
	for from <= last && count > 0 {
		entries, err := o.node.Read(from, min(count, 1000))
		if err != nil {
			return fail(1, "reading the log: %v", err)
		}
		if len(entries) == 0 {
			break
		}
		for _, e := range entries {
			if err := out.Encode(entryJSON(e)); err != nil {
				return 1
			}
		}
		from = entries[len(entries)-1].Offset + 1
		count -= len(entries)
	}
	return 0
}

type printedEntry struct {
	Offset  uint64          `json:"offset"`
	Kind    string          `json:"kind"`
	Time    string          `json:"time"`
	Payload json.RawMessage `json:"payload"`
}

func entryJSON(e englog.Entry) printedEntry {
	p := json.RawMessage(e.Payload)
	if !json.Valid(e.Payload) {
		// Not JSON (a binary payload): show it as a base64 string.
		b, _ := json.Marshal(e.Payload)
		p = b
	}
	p = redactSecrets(p)
	return printedEntry{
		Offset:  e.Offset,
		Kind:    e.Kind.String(),
		Time:    time.UnixMilli(e.Time).UTC().Format(time.RFC3339Nano),
		Payload: p,
	}
}

// secretFields are payload fields that engram log never prints: password
// hashes (crackable offline), hashes of access and refresh tokens,
// registration tokens and shared secrets.
var secretFields = map[string]bool{
	"password_hash": true, "password": true, "new_password": true, "token_sha256": true,
	"refresh_sha256": true, "replaces": true, "token": true, "mac": true,
	"registration_shared_secret": true, "access_token": true, "refresh_token": true,
}

// redactSecrets replaces the values of secretFields, at any depth, with
// "[redacted]"; the rest of the payload is printed as recorded.
func redactSecrets(p json.RawMessage) json.RawMessage {
	var v any
	if err := json.Unmarshal(p, &v); err != nil {
		return p
	}
	changed := false
	var walk func(any)
	walk = func(x any) {
		switch t := x.(type) {
		case map[string]any:
			for k, val := range t {
				if s, ok := val.(string); ok && secretFields[k] && s != "" {
					t[k] = "[redacted]"
					changed = true
					continue
				}
				walk(val)
			}
		case []any:
			for _, val := range t {
				walk(val)
			}
		}
	}
	walk(v)
	if !changed {
		return p
	}
	b, err := json.Marshal(v)
	if err != nil {
		return p
	}
	return b
}
