package log

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
)

func TestFailedSyncFailsAppendAndNeverAcknowledges(t *testing.T) {
	dir := t.TempDir()
	var failing atomic.Bool
	fs := failingSyncFS{FS: vfs.Default, failing: &failing}
	n, err := Open(Config{Dir: dir, fs: fs, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)})
	if err != nil {
		t.Fatal(err)
	}
	want := fillLog(t, n, 10)

	failing.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		offs, err := n.Append(ctx, Proposal{Kind: KindPDU, Payload: []byte("doomed")})
		if err == nil {
			t.Fatalf("Append acknowledged offsets %v although the WAL could not be synced", offs)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatal("Append hung instead of failing")
		}
		if !strings.Contains(err.Error(), "restart") {
			t.Fatalf("Append error %q should tell the operator what to do", err)
		}
	}
	n.Close()

	// Healthy disk again: every acknowledged entry is there, and the log
	// takes writes.
	failing.Store(false)
	n = openSingle(t, dir)
	defer n.Close()
	got, err := n.Read(1, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < len(want) {
		t.Fatalf("log holds %d entries after the disk error, want at least the %d acknowledged", len(got), len(want))
	}
	for off, p := range want {
		if string(got[off-1].Payload) != string(p) {
			t.Fatalf("acknowledged entry %d changed", off)
		}
	}
	if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
}

// failingSyncFS fails every sync of a WAL file while failing is set, like
// a disk that filled up or died under the log.
type failingSyncFS struct {
	vfs.FS
	failing *atomic.Bool
}

func (f failingSyncFS) wrap(file vfs.File, name string, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return file, err
	}
	return failingSyncFile{File: file, failing: f.failing}, nil
}

func (f failingSyncFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.Create(name, category)
	return f.wrap(file, name, err)
}

func (f failingSyncFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.ReuseForWrite(oldname, newname, category)
	return f.wrap(file, newname, err)
}

type failingSyncFile struct {
	vfs.File
	failing *atomic.Bool
}

var errInjectedSync = errors.New("injected: no space left on device")

func (f failingSyncFile) Sync() error {
	if f.failing.Load() {
		return errInjectedSync
	}
	return f.File.Sync()
}

func (f failingSyncFile) SyncData() error {
	if f.failing.Load() {
		return errInjectedSync
	}
	return f.File.SyncData()
}

func (f failingSyncFile) SyncTo(length int64) (bool, error) {
	if f.failing.Load() {
		return false, errInjectedSync
	}
	return f.File.SyncTo(length)
}
