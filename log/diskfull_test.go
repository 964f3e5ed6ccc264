package log

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// smallDisk is a small filesystem for disk-full tests: a real tmpfs when
// the test may mount one (root), else a simulated one whose free space is
// its size minus the bytes under its directory (the statfs seam). fill
// takes space until only leave bytes are free; unfill gives it back.
type smallDisk struct {
	dir    string
	statfs statfsFunc // nil on a real tmpfs
	real   bool

	mu     sync.Mutex
	filled int64 // simulated filler bytes
}

func newSmallDisk(t *testing.T, size int64) *smallDisk {
	t.Helper()
	d := &smallDisk{dir: t.TempDir()}
	if err := syscall.Mount("tmpfs", d.dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err == nil {
		d.real = true
		t.Cleanup(func() { syscall.Unmount(d.dir, syscall.MNT_DETACH) })
		t.Logf("disk-full test on a real %d MiB tmpfs", size>>20)
		return d
	}
	t.Logf("cannot mount a tmpfs here (not root?): disk-full test on a simulated %d MiB filesystem (statfs seam)", size>>20)
	d.statfs = func(string) (uint64, uint64, error) {
		var used int64
		filepath.WalkDir(d.dir, func(_ string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				if fi, err := e.Info(); err == nil {
					used += fi.Size()
				}
			}
			return nil
		})
		d.mu.Lock()
		used += d.filled
		d.mu.Unlock()
		return uint64(max(size-used, 0)), uint64(size), nil
	}
	return d
}

func (d *smallDisk) free(t *testing.T) uint64 {
	t.Helper()
	fn := d.statfs
	if fn == nil {
		fn = statfs
	}
	free, _, err := fn(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	return free
}

func (d *smallDisk) fill(t *testing.T, leave uint64) {
	t.Helper()
	take := int64(d.free(t)) - int64(leave)
	if take <= 0 {
		return
	}
	if !d.real {
		d.mu.Lock()
		d.filled += take
		d.mu.Unlock()
		return
	}
	f, err := os.OpenFile(filepath.Join(d.dir, "filler"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if err := syscall.Fallocate(int(f.Fd()), 0, fi.Size(), take); err != nil {
		t.Fatal(err)
	}
}

func (d *smallDisk) unfill(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	d.filled = 0
	d.mu.Unlock()
	if err := os.Remove(filepath.Join(d.dir, "filler")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// TestDiskFullRefusesWritesKeepsReadsAndResumes fills the disk under
// running appends: they fail with ErrDiskFull (never anything else, never
// a panic), reads keep working, and once space is freed writes resume
// without a restart. A restart on a nearly full disk gives up the ballast,
// says so, serves reads and refuses writes. Nothing acknowledged is lost.
func TestDiskFullRefusesWritesKeepsReadsAndResumes(t *testing.T) {
	const size, reserve = 64 << 20, 8 << 20
	disk := newSmallDisk(t, size)
	dir := filepath.Join(disk.dir, "db")
	logs := &lineRecorder{}
	open := func() *Node {
		t.Helper()
		n, err := Open(Config{Dir: dir, DiskReserve: reserve, BallastSize: reserve / 2, statfs: disk.statfs,
			Logger: zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.WarnLevel)})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return n
	}
	n := open()
	if fi, err := os.Stat(filepath.Join(dir, ballastName)); err != nil || fi.Size() != reserve/2 {
		t.Fatalf("ballast: %v, %v; want a %d-byte file", fi, err, reserve/2)
	}

	var (
		mu       sync.Mutex
		acked    = map[uint64][]byte{}
		refused  atomic.Int64
		badErr   atomic.Pointer[error]
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		lastGood atomic.Int64 // unix ns of the last acknowledged append
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := crashPayload(0, w, i)
				offs, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: p})
				switch {
				case err == nil:
					mu.Lock()
					acked[offs[0]] = p
					mu.Unlock()
					lastGood.Store(time.Now().UnixNano())
				case errors.Is(err, ErrDiskFull):
					refused.Add(1)
					time.Sleep(5 * time.Millisecond)
				default:
					badErr.CompareAndSwap(nil, &err)
					return
				}
			}
		}(w)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if p := badErr.Load(); p != nil {
				t.Fatalf("an append failed with %v, want only ErrDiskFull", *p)
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("some appends", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 200 })

	disk.fill(t, reserve/2)
	waitFor("appends to be refused", func() bool { return refused.Load() > 50 })
	// Refused for good while full: nothing is acknowledged any more.
	time.Sleep(2 * spaceRecheck)
	before := lastGood.Load()
	time.Sleep(300 * time.Millisecond)
	if lastGood.Load() != before {
		t.Fatal("appends were acknowledged with the disk below the reserve")
	}
	if !logs.contains("disk nearly full: writes are refused; free at least") {
		t.Fatal("no log line says what to free")
	}
	// Reads keep working.
	if got, err := n.Read(1, 10); err != nil || len(got) != 10 {
		t.Fatalf("Read on a full disk: %d entries, %v", len(got), err)
	}

	disk.unfill(t)
	resumedAfter := time.Now().UnixNano()
	waitFor("writes to resume without a restart", func() bool { return lastGood.Load() > resumedAfter })
	close(stop)
	wg.Wait()
	if p := badErr.Load(); p != nil {
		t.Fatalf("an append failed with %v, want only ErrDiskFull", *p)
	}
	t.Logf("%d appends acknowledged, %d refused with ErrDiskFull", len(acked), refused.Load())
	n.Close()

	// Start on a nearly full disk: the ballast goes, the log opens and
	// serves reads, writes are refused until space is freed.
	disk.fill(t, reserve/4)
	n = open()
	if _, err := os.Stat(filepath.Join(dir, ballastName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ballast still there on a nearly full disk: %v", err)
	}
	if !logs.contains("deleted the emergency ballast") || !logs.contains("starting with a nearly full disk") {
		t.Fatal("start on a nearly full disk does not say so")
	}
	checkEntries(t, n, acked)
	// Opening may have given space back (Pebble drops WAL files it
	// replayed): take it again, as a disk that stays full would.
	disk.fill(t, reserve/4)
	time.Sleep(2 * spaceRecheck)
	if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: []byte("x")}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Append on a nearly full disk: %v, want ErrDiskFull", err)
	}
	disk.unfill(t)
	time.Sleep(2 * spaceRecheck)
	offs, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: []byte("after")})
	if err != nil {
		t.Fatalf("Append after freeing space: %v", err)
	}
	acked[offs[0]] = []byte("after")
	n.Close()

	// The next start has room again: the ballast is back.
	n = open()
	defer n.Close()
	checkEntries(t, n, acked)
	if _, err := os.Stat(filepath.Join(dir, ballastName)); err != nil {
		t.Fatalf("ballast not recreated once space was freed: %v", err)
	}
}

// lineRecorder keeps log lines for assertions.
type lineRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *lineRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.lines = append(r.lines, string(p))
	r.mu.Unlock()
	return len(p), nil
}

func (r *lineRecorder) contains(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}
