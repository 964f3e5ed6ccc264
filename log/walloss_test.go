package log

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// crashImage copies a live node's directory: with no append in flight
// (every acknowledged entry synced) it is what a power cut would leave.
func crashImage(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	err := filepath.Walk(from, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if fi.IsDir() {
			return os.MkdirAll(dst, 0o750)
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, src); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return to
}

// newestWAL is the highest-numbered Pebble WAL file in dir.
func newestWAL(t *testing.T, dir string) string {
	t.Helper()
	wals, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(wals) == 0 {
		t.Fatal("no WAL file")
	}
	sort.Strings(wals)
	return wals[len(wals)-1]
}

// TestTruncatedWALIsReportedAndRefused: Pebble replays a truncated WAL up
// to the cut and drops the rest without a word, so acknowledged entries
// vanish. Start compares the log with the acknowledged offset kept in the
// state file, names the missing range and refuses to serve; the operator
// may accept the loss explicitly.
func TestTruncatedWALIsReportedAndRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(size int64) int64
		// A 100-byte cut may only hit the last event-log batch, which raft
		// re-applies from its own record before it: nothing is lost then.
		mayKeepAll bool
	}{
		{"by 100 bytes", func(size int64) int64 { return size - 100 }, true},
		{"to half", func(size int64) int64 { return size / 2 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			n := openSingle(t, dir)
			want := fillLog(t, n, 600)
			img := crashImage(t, dir)
			n.Close()

			wal := newestWAL(t, img)
			fi, err := os.Stat(wal)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(wal, tc.cut(fi.Size())); err != nil {
				t.Fatal(err)
			}

			n, err = Open(Config{Dir: img, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
			if err == nil && tc.mayKeepAll {
				defer n.Close()
				checkEntries(t, n, want)
				t.Log("the cut hit only what raft re-applies: nothing lost")
				return
			}
			var lost *LostError
			if !errors.As(err, &lost) || !errors.Is(err, ErrLostAcknowledged) {
				t.Fatalf("Open after truncating the newest WAL: %v, want a LostError", err)
			}
			if lost.To != 600 || lost.From < 1 || lost.From > 600 {
				t.Fatalf("reported missing range %d..%d, want ..600", lost.From, lost.To)
			}
			if !strings.Contains(err.Error(), "--accept-data-loss") {
				t.Fatalf("error %q does not say how to go on", err)
			}
			t.Logf("reported: %v", err)

			// Accepting the loss opens the log with what survived, intact.
			n, err = Open(Config{Dir: img, AcceptDataLoss: true, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)})
			if err != nil {
				t.Fatalf("Open with AcceptDataLoss: %v", err)
			}
			if got := n.LastOffset(); got != lost.From-1 {
				t.Fatalf("LastOffset %d after accepting the loss, want %d", got, lost.From-1)
			}
			kept := map[uint64][]byte{}
			for off := uint64(1); off < lost.From; off++ {
				kept[off] = want[off]
			}
			checkEntries(t, n, kept)
			more := fillLog(t, n, 3)
			for off, p := range more {
				kept[off] = p
			}
			n.Close()
			// The loss was accepted once: the next start is clean.
			n = openSingle(t, img)
			defer n.Close()
			checkEntries(t, n, kept)
		})
	}
}
