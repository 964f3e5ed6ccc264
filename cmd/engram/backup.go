package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	encbin "encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
)

// Backups copy the log, the only truth: everything else is rebuilt from
// it. `engram backup` pulls the entries a backup lacks from the running
// server (GET /_engram/backup/log, authenticated with an HMAC of the
// registration shared secret), or reads the log directly when the server
// is stopped, and writes them as a new segment (log/backup.go). The
// signing key and the configuration are copied beside the segments.

// backupPage bounds one pull from the server.
const backupPage = 20000

// backupHandler serves log entries to `engram backup`:
// be64 offset, be16 kind, be64 time, uvarint length, payload, per entry.
func backupHandler(secret string, l englog.Log) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, err1 := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
		max, err2 := strconv.Atoi(r.URL.Query().Get("max"))
		if err1 != nil || err2 != nil || max <= 0 || max > backupPage {
			http.Error(w, "from and max (1.."+strconv.Itoa(backupPage)+") are required", http.StatusBadRequest)
			return
		}
		if secret == "" || !backupAuthOK(secret, r.Header.Get("X-Engram-Backup"), from, max, time.Now()) {
			http.Error(w, "backup requests are signed with registration_shared_secret (engram backup does it)", http.StatusForbidden)
			return
		}
		entries, err := l.Read(from, max)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Engram-Last-Offset", strconv.FormatUint(l.LastOffset(), 10))
		bw := bufio.NewWriterSize(w, 256<<10)
		var hdr [18 + encbin.MaxVarintLen64]byte
		for _, e := range entries {
			encbin.BigEndian.PutUint64(hdr[0:8], e.Offset)
			encbin.BigEndian.PutUint16(hdr[8:10], uint16(e.Kind))
			encbin.BigEndian.PutUint64(hdr[10:18], uint64(e.Time))
			n := 18 + encbin.PutUvarint(hdr[18:], uint64(len(e.Payload)))
			bw.Write(hdr[:n])
			bw.Write(e.Payload)
		}
		bw.Flush()
	})
}

func backupMAC(secret string, ts int64, from uint64, max int) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "engram-backup\x00%d\x00%d\x00%d", ts, from, max)
	return hex.EncodeToString(m.Sum(nil))
}

func backupAuthOK(secret, header string, from uint64, max int, now time.Time) bool {
	tsStr, mac, ok := strings.Cut(header, ":")
	ts, err := strconv.ParseInt(tsStr, 10, 64)
	if !ok || err != nil || now.Sub(time.UnixMilli(ts)).Abs() > 5*time.Minute {
		return false
	}
	return hmac.Equal([]byte(mac), []byte(backupMAC(secret, ts, from, max)))
}

func backupCmd(args []string) int {
	if len(args) > 0 && args[0] == "verify" {
		return backupVerifyCmd(args[1:])
	}
	cf := newConfigFlags("backup", false)
	to := cf.fs.String("to", "", "backup directory (created if absent; later runs add only new entries)")
	url := cf.fs.String("url", "", "server URL (default: http://<listen>)")
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	if *to == "" {
		return fail(2, "backup needs --to DIR")
	}
	l, err := cf.load(false)
	if err != nil {
		return fail(2, "%v", err)
	}
	if err := os.MkdirAll(*to, 0o700); err != nil {
		return fail(1, "%v", err)
	}
	m, err := englog.ReadBackupManifest(*to)
	if err != nil {
		return fail(1, "%v", err)
	}
	started, before := time.Now(), m.LastOffset()
	pull, closeSrc, how, err := backupSource(l, *url)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer closeSrc()
	var batch []englog.Entry
	for {
		page, err := pull(m.LastOffset() + 1 + uint64(len(batch)))
		if err != nil {
			return fail(1, "reading the log (%s): %v", how, err)
		}
		batch = append(batch, page...)
		if len(page) == 0 || len(batch) >= 100000 {
			if err := englog.WriteBackupSegment(*to, &m, batch); err != nil {
				return fail(1, "writing a backup segment: %v", err)
			}
			batch = batch[:0]
		}
		if len(page) == 0 {
			break
		}
	}
	for src, name := range map[string]string{l.cfg.SigningKeyPath: "signing.key", l.path: "engram.yaml"} {
		if b, err := os.ReadFile(src); err == nil {
			if err := os.WriteFile(filepath.Join(*to, name), b, 0o600); err != nil {
				return fail(1, "copying %s: %v", src, err)
			}
		}
	}
	fmt.Printf("backed up offsets %d..%d (%d new entries, %s) into %s in %s; %d segments\n",
		before+1, m.LastOffset(), m.LastOffset()-before, how, *to, time.Since(started).Round(time.Millisecond), len(m.Segments))
	return 0
}

// backupSource pulls entries from the running server, or from the log on
// disk when no server answers.
func backupSource(l loaded, url string) (pull func(from uint64) ([]englog.Entry, error), closeFn func(), how string, err error) {
	base := url
	if base == "" {
		host, port, _ := net.SplitHostPort(l.cfg.Listen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		base = "http://" + net.JoinHostPort(host, port)
	}
	base = strings.TrimRight(base, "/")
	client := &http.Client{Timeout: 2 * time.Minute}
	pullHTTP := func(from uint64) ([]englog.Entry, error) {
		req, err := http.NewRequest("GET", fmt.Sprintf("%s/_engram/backup/log?from=%d&max=%d", base, from, backupPage), nil)
		if err != nil {
			return nil, err
		}
		ts := time.Now().UnixMilli()
		req.Header.Set("X-Engram-Backup", fmt.Sprintf("%d:%s", ts, backupMAC(l.cfg.RegistrationSharedSecret, ts, from, backupPage)))
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return decodeBackupPage(bufio.NewReaderSize(resp.Body, 256<<10))
	}
	if _, err := pullHTTP(1 << 62); err == nil {
		return pullHTTP, func() {}, "online, from " + base, nil
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		return nil, nil, "", fmt.Errorf("asking the server at %s: %w", base, err)
	}
	node, err := openLogOffline(l.cfg, newLogger("warn"))
	if err != nil {
		return nil, nil, "", fmt.Errorf("no server answers at %s, and opening the log directly failed: %w", base, err)
	}
	return func(from uint64) ([]englog.Entry, error) { return node.Read(from, backupPage) }, func() { node.Close() }, "offline, from " + l.cfg.DataDir, nil
}

func decodeBackupPage(r *bufio.Reader) ([]englog.Entry, error) {
	var out []englog.Entry
	var hdr [18]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("truncated answer: %w", err)
		}
		n, err := encbin.ReadUvarint(r)
		if err != nil || n > 1<<30 {
			return nil, errors.New("bad entry length in the answer")
		}
		e := englog.Entry{Offset: encbin.BigEndian.Uint64(hdr[0:8]), Kind: englog.Kind(encbin.BigEndian.Uint16(hdr[8:10])), Time: int64(encbin.BigEndian.Uint64(hdr[10:18])), Payload: make([]byte, n)}
		if _, err := io.ReadFull(r, e.Payload); err != nil {
			return nil, fmt.Errorf("truncated answer: %w", err)
		}
		out = append(out, e)
	}
}

func backupVerifyCmd(args []string) int {
	if len(args) != 1 {
		return fail(2, "usage: engram backup verify DIR")
	}
	dir := args[0]
	m, err := englog.ReadBackupManifest(dir)
	if err != nil {
		return fail(1, "%v", err)
	}
	if len(m.Segments) == 0 {
		return fail(1, "%s holds no backup (no manifest.json)", dir)
	}
	for _, s := range m.Segments {
		if err := englog.ReadBackupSegment(dir, s, func(englog.Entry) bool { return true }); err != nil {
			return fail(1, "%v", err)
		}
	}
	fmt.Printf("backup %s is intact: %d segments, offsets 1..%d, every checksum matches\n", dir, len(m.Segments), m.LastOffset())
	return 0
}

func restoreCmd(args []string) int {
	cf := newConfigFlags("restore", false)
	from := cf.fs.String("from", "", "backup directory (required)")
	toOffset := cf.fs.Uint64("to-offset", 0, "restore entries up to this log offset")
	toTime := cf.fs.String("to-time", "", "restore entries written at or before this time (RFC 3339, or Unix milliseconds)")
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	newDir := cf.set()["data_dir"]
	if *from == "" || newDir == "" || (*toOffset == 0) == (*toTime == "") {
		return fail(2, "usage: engram restore --from DIR (--to-offset N | --to-time T) --data-dir NEW [--config FILE]")
	}
	var cutTime int64 = -1
	if *toTime != "" {
		if ms, err := strconv.ParseInt(*toTime, 10, 64); err == nil {
			cutTime = ms
		} else if t, err := time.Parse(time.RFC3339Nano, *toTime); err == nil {
			cutTime = t.UnixMilli()
		} else {
			return fail(2, "--to-time %q: want RFC 3339 (2026-12-02T07:00:00Z) or Unix milliseconds", *toTime)
		}
	}
	m, err := englog.ReadBackupManifest(*from)
	if err != nil {
		return fail(1, "%v", err)
	}
	if len(m.Segments) == 0 {
		return fail(1, "%s holds no backup", *from)
	}
	keep := func(e englog.Entry) bool {
		if cutTime >= 0 {
			return e.Time <= cutTime
		}
		return e.Offset <= *toOffset
	}

	// Pass 1, the log: entries up to the cut go into the new data dir;
	// the rest are only counted, for the report.
	started := time.Now()
	total := m.LastOffset()
	bar := newProgressBar(os.Stderr)
	entries := make(chan englog.Entry, 4096)
	rep := restoreReport{rooms: map[string]bool{}, users: map[string]bool{}, kinds: map[string]int{}, logouts: newLogouts()}
	readErr := make(chan error, 1)
	go func() {
		defer close(entries)
		for _, s := range m.Segments {
			err := englog.ReadBackupSegment(*from, s, func(e englog.Entry) bool {
				if keep(e) && rep.dropped == 0 {
					rep.logouts.kept(e)
					entries <- e
				} else {
					rep.drop(e)
				}
				bar.update("log", e.Offset, total)
				return true
			})
			if err != nil {
				readErr <- err
				return
			}
		}
		readErr <- nil
	}()
	var lastKept englog.Entry
	var cut uint64
	tailStarted, restoredAppended, discardAppended := false, false, false
	last, err := englog.ImportLog(filepath.Join(newDir, "db"), func() (englog.Entry, bool, error) {
		e, ok := <-entries
		if ok {
			lastKept = e
			return e, true, nil
		}
		// The reader is done (the channel is closed after its last
		// report). First: a logout, a removed device, a deactivation or a
		// password change that logged devices out after the cut must not
		// bring their tokens back; revoke those the kept log still holds.
		// (Revocations change nothing other users see, so they sit among
		// the entries read as the cut's position.)
		if !tailStarted {
			tailStarted = true
			cut = lastKept.Offset
			rep.revoking = rep.logouts.revocations()
			rep.revoked = len(rep.revoking)
		}
		if len(rep.revoking) > 0 {
			payload, err := json.Marshal(rep.revoking[0])
			if err != nil {
				return englog.Entry{}, false, err
			}
			rep.revoking = rep.revoking[1:]
			lastKept = englog.Entry{Offset: lastKept.Offset + 1, Kind: englog.KindAccessTokenRevoked, Time: lastKept.Time, Payload: payload}
			return lastKept, true, nil
		}
		// Claims in the dropped suffix handed one-time keys to
		// clients, and which ones the restored log cannot tell: discard
		// every key unclaimed at the cut, so none is handed out twice
		// (facts.OneTimeKeysDiscarded; devices upload fresh ones).
		if rep.claimsDropped > 0 && !discardAppended {
			discardAppended = true
			payload, err := json.Marshal(facts.OneTimeKeysDiscarded{UpTo: cut, Reason: "point-in-time restore: one-time keys were claimed after the cut"})
			if err != nil {
				return englog.Entry{}, false, err
			}
			rep.discardedAt = lastKept.Offset + 1
			lastKept = englog.Entry{Offset: lastKept.Offset + 1, Kind: englog.KindOneTimeKeysDiscarded, Time: max(lastKept.Time, time.Now().UnixMilli()), Payload: payload}
			return lastKept, true, nil
		}
		// Last: the original server may have gone on past the cut (past
		// the backup's end, too), and its clients hold stream tokens from
		// there. Mark the cut, so the restored server tells those tokens
		// from its own (facts.Restored).
		if !restoredAppended {
			restoredAppended = true
			payload, err := json.Marshal(facts.Restored{Cut: cut, Reason: "point-in-time restore"})
			if err != nil {
				return englog.Entry{}, false, err
			}
			rep.cut, rep.restoredAt = cut, lastKept.Offset+1
			return englog.Entry{Offset: lastKept.Offset + 1, Kind: englog.KindRestored, Time: lastKept.Time, Payload: payload}, true, nil
		}
		return englog.Entry{}, false, nil
	})
	for range entries { // drain on error
	}
	if rerr := <-readErr; rerr != nil {
		err = rerr
	}
	bar.done()
	if err != nil {
		return fail(1, "restore: %v", err)
	}
	for _, name := range []string{"signing.key", "engram.yaml"} {
		if b, err := os.ReadFile(filepath.Join(*from, name)); err == nil {
			dst := filepath.Join(newDir, name)
			if name == "engram.yaml" {
				dst = filepath.Join(newDir, "engram.yaml.from-backup")
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				return fail(1, "%v", err)
			}
		}
	}

	// Pass 2, the projections: a replay of the restored log, under the
	// configuration given or the one the backup holds.
	cfgPath := *cf.config
	if cfgPath == "" {
		cfgPath = filepath.Join(*from, "engram.yaml")
	}
	cfg, _, err := loadConfig(cfgPath, os.LookupEnv, nil)
	if err != nil {
		return fail(1, "the log is restored, but the projections need the configuration: %v (pass --config FILE)", err)
	}
	l := loaded{cfg: cfg, path: cfgPath}
	l.cfg.DataDir = newDir
	l.cfg.SigningKeyPath = filepath.Join(newDir, "signing.key")
	l.cfg.ClusterRaftListen, l.cfg.ClusterPeers = "", nil // a restored node starts alone
	logger := newLogger("warn")
	node, err := openLogOffline(l.cfg, logger)
	if err != nil {
		return fail(1, "opening the restored log: %v", err)
	}
	o := &offline{l: l, logger: logger, node: node}
	e, release, err := o.engine(node.DB())
	if err != nil {
		node.Close()
		return fail(1, "%v", err)
	}
	e.OnProgress(bar.update)
	ctx, cancel := signalContext()
	defer cancel()
	if err := e.Rebuild(ctx); err != nil {
		bar.done()
		release()
		node.Close()
		return fail(1, "rebuilding the projections: %v", err)
	}
	bar.done()
	if err := e.Settle(ctx); err != nil {
		release()
		node.Close()
		return fail(1, "compacting the rebuilt projections: %v", err)
	}
	release()
	if err := node.Close(); err != nil {
		return fail(1, "%v", err)
	}
	rep.print(os.Stdout, last, total, time.Since(started), newDir)
	return 0
}

// restoreReport says what a restore left out.
type restoreReport struct {
	dropped       uint64
	claimsDropped int    // one-time key claims after the cut
	cut           uint64 // the last entry kept
	restoredAt    uint64 // offset of the Restored fact the restore appended last
	discardedAt   uint64 // offset of the OneTimeKeysDiscarded appended, 0 if none
	rooms, users  map[string]bool
	kinds         map[string]int
	firstDropped  int64
	logouts       *logouts
	revoking      []facts.AccessTokenRevoked // still to append
	revoked       int
}

// logouts gathers, for a restore, the access tokens the kept log issued
// and what the dropped suffix did to them.
type logouts struct {
	issued  []facts.AccessTokenIssued // in log order
	tokens  map[string]bool           // token hashes revoked after the cut
	devices map[[2]string]bool        // user, device removed after the cut
	users   map[string]bool           // users deactivated after the cut
	except  map[string]string         // user -> the device a password change kept logged in
}

func newLogouts() *logouts {
	return &logouts{tokens: map[string]bool{}, devices: map[[2]string]bool{}, users: map[string]bool{}, except: map[string]string{}}
}

func (l *logouts) kept(e englog.Entry) {
	if e.Kind != englog.KindAccessTokenIssued {
		return
	}
	var f facts.AccessTokenIssued
	if facts.Decode(e, &f) == nil {
		l.issued = append(l.issued, f)
	}
}

func (l *logouts) dropped(e englog.Entry) {
	switch e.Kind {
	case englog.KindAccessTokenRevoked:
		var f facts.AccessTokenRevoked
		if facts.Decode(e, &f) == nil {
			l.tokens[f.TokenSHA256] = true
		}
	case englog.KindDeviceRemoved:
		var f facts.DeviceRemoved
		if facts.Decode(e, &f) == nil {
			for _, d := range f.DeviceIDs {
				l.devices[[2]string{f.UserID, d}] = true
			}
		}
	case englog.KindAccountDeactivated:
		var f facts.AccountDeactivated
		if facts.Decode(e, &f) == nil {
			l.users[f.UserID] = true
		}
	case englog.KindPasswordChanged:
		var f facts.PasswordChanged
		if facts.Decode(e, &f) == nil && f.LogoutDevices {
			if keep, seen := l.except[f.UserID]; seen && keep != f.KeepDeviceID {
				l.users[f.UserID] = true // two changes keeping different devices: none stays
			}
			l.except[f.UserID] = f.KeepDeviceID
		}
	}
}

// revocations are the kept tokens the dropped suffix logged out, in the
// order they were issued.
func (l *logouts) revocations() []facts.AccessTokenRevoked {
	var out []facts.AccessTokenRevoked
	for _, t := range l.issued {
		keep, changed := l.except[t.UserID]
		if l.tokens[t.TokenSHA256] || l.devices[[2]string{t.UserID, t.DeviceID}] || l.users[t.UserID] || (changed && t.DeviceID != keep) {
			out = append(out, facts.AccessTokenRevoked{UserID: t.UserID, TokenSHA256: t.TokenSHA256})
		}
	}
	return out
}

func (r *restoreReport) drop(e englog.Entry) {
	if r.dropped == 0 {
		r.firstDropped = e.Time
	}
	r.dropped++
	r.kinds[e.Kind.String()]++
	r.logouts.dropped(e)
	if e.Kind == englog.KindKeysClaimed {
		r.claimsDropped++
	}
	if e.Kind == englog.KindPDU {
		var p facts.PDU
		var ev struct {
			RoomID string `json:"room_id"`
			Sender string `json:"sender"`
		}
		if json.Unmarshal(e.Payload, &p) == nil && json.Unmarshal(p.Event, &ev) == nil {
			r.rooms[ev.RoomID] = true
			r.users[ev.Sender] = true
		}
	}
}

func (r *restoreReport) print(w io.Writer, last, total uint64, took time.Duration, dir string) {
	kept := r.cut // the facts the restore appended follow the cut
	fmt.Fprintf(w, "restored log offsets 1..%d into %s in %s (projections rebuilt)\n", kept, dir, took.Round(time.Millisecond))
	fmt.Fprintf(w, "kept %d entries, dropped %d (offsets %d..%d)\n", kept, r.dropped, kept+1, total)
	if r.revoked > 0 {
		fmt.Fprintf(w, "%d access tokens were logged out after the cut (logouts, removed devices, deactivations, password changes): they stay revoked\n", r.revoked)
	}
	if r.discardedAt != 0 {
		fmt.Fprintf(w, "%d one-time key claims were after the cut: every one-time key unclaimed at the cut is discarded (entry %d), so none is handed out twice; devices upload new ones\n", r.claimsDropped, r.discardedAt)
	}
	if r.dropped > 0 {
		fmt.Fprintf(w, "first dropped entry written at %s\n", time.UnixMilli(r.firstDropped).UTC().Format(time.RFC3339Nano))
		kinds := make([]string, 0, len(r.kinds))
		for k := range r.kinds {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			fmt.Fprintf(w, "  dropped %-24s %d\n", k, r.kinds[k])
		}
		for _, set := range []struct {
			what string
			m    map[string]bool
		}{{"rooms changed after the cut", r.rooms}, {"users who sent events after the cut", r.users}} {
			ids := make([]string, 0, len(set.m))
			for id := range set.m {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			fmt.Fprintf(w, "%s (%d): %s\n", set.what, len(ids), strings.Join(ids, " "))
		}
	}
	fmt.Fprintf(w, "start it with: engram serve --config <your engram.yaml> --data-dir %s\n", dir)
	fmt.Fprintf(w, "the cut is marked (entry %d): a client whose /sync token is from after it is told to start again (400 M_UNKNOWN_POS)\n", r.restoredAt)
	fmt.Fprintln(w, "note: logins after the cut are not in the restored log, so their access tokens are unknown to it (those clients log in again)")
}
