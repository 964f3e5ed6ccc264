package log

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ErrDiskFull: the free space on the log's filesystem is below the reserve,
// so the log refuses new writes (reads keep working). Writes resume by
// themselves, without a restart, once the operator frees space.
var ErrDiskFull = errors.New("log: the disk is nearly full, writes are refused until space is freed")

// Free space is watched so that Pebble never meets a full disk: Pebble
// treats a failed WAL write as fatal (see diskGuard), after which only a
// restart helps, and a restart itself needs space to replay the WAL. So:
//
//   - Append refuses new entries (ErrDiskFull) while the free space is
//     below the reserve;
//   - the raft log store refuses commands below a quarter of the reserve
//     (a follower whose disk fills rejects entries cleanly; its leader
//     retries them later) but still stores raft's own tiny entries, so
//     elections go on;
//   - raft's term and vote live in a preallocated file (stable.go), which
//     a full disk cannot fail: hashicorp/raft panics when it cannot save
//     its term;
//   - a ballast file holds back space that Open gives up when it starts on
//     a nearly full disk, so WAL replay and compaction can always proceed.
const (
	// DefaultReserveMin is the smallest default reserve; the default is
	// the larger of this and 1% of the filesystem.
	DefaultReserveMin = 256 << 20
	// BallastAuto as Config.BallastSize sizes the ballast at half the
	// reserve, at most ballastMax.
	BallastAuto = -1
	ballastMax  = 128 << 20
	// ballastName is the ballast file, in the log directory.
	ballastName = "EMERGENCY_BALLAST"
	// spaceRecheck bounds how stale the free-space figure may be: the
	// reserve must exceed what the log can write in that time.
	spaceRecheck = 50 * time.Millisecond
)

// statfsFunc reports the free (available to us) and total bytes of the
// filesystem holding path.
type statfsFunc func(path string) (free, total uint64, err error)

func statfs(path string) (free, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), uint64(st.Blocks) * uint64(st.Bsize), nil
}

// diskSpace watches the free space of the log's filesystem.
type diskSpace struct {
	dir     string
	statfs  statfsFunc
	reserve uint64
	log     zerolog.Logger

	checkedAt atomic.Int64 // unix ns of the last statfs
	free      atomic.Uint64
	low       atomic.Bool

	mu sync.Mutex // serialises statfs and the low/ok transition lines
}

func newDiskSpace(dir string, fn statfsFunc, reserve uint64, l zerolog.Logger) (*diskSpace, error) {
	if fn == nil {
		fn = statfs
	}
	s := &diskSpace{dir: dir, statfs: fn, log: l}
	free, total, err := fn(dir)
	if err != nil {
		return nil, fmt.Errorf("log: reading the free space of %s: %w", dir, err)
	}
	if reserve == 0 {
		reserve = max(total/100, DefaultReserveMin)
	}
	s.reserve = reserve
	s.store(free)
	return s, nil
}

func (s *diskSpace) store(free uint64) {
	s.free.Store(free)
	s.checkedAt.Store(time.Now().UnixNano())
}

// refresh re-reads the free space when the last figure is stale and logs
// one line when the log crosses the reserve either way.
func (s *diskSpace) refresh(force bool) uint64 {
	if !force && time.Now().UnixNano()-s.checkedAt.Load() < int64(spaceRecheck) {
		return s.free.Load()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !force && time.Now().UnixNano()-s.checkedAt.Load() < int64(spaceRecheck) {
		return s.free.Load()
	}
	free, _, err := s.statfs(s.dir)
	if err != nil {
		// Unknown is not full: keep the last figure, retry next time.
		s.checkedAt.Store(time.Now().UnixNano())
		return s.free.Load()
	}
	s.store(free)
	low := free < s.reserve
	if low != s.low.Load() {
		s.low.Store(low)
		if low {
			s.log.Error().Uint64("free_bytes", free).Uint64("reserve_bytes", s.reserve).Str("dir", s.dir).
				Msgf("log: disk nearly full: writes are refused; free at least %s on the filesystem holding %s (old logs, media, other files) and writes resume by themselves", humanBytes(s.reserve-free), s.dir)
		} else {
			s.log.Warn().Uint64("free_bytes", free).Uint64("reserve_bytes", s.reserve).Msg("log: free space is back above the reserve; writes resume")
		}
	}
	return free
}

// writable fails with ErrDiskFull while the free space is below the
// reserve. Append checks a figure at most spaceRecheck old; the batcher
// checks afresh before every raft command (a statfs costs microseconds,
// and appends already inside the batcher are not counted by the cached
// figure).
func (s *diskSpace) writable(fresh bool) error {
	if free := s.refresh(fresh); free < s.reserve {
		return fmt.Errorf("%w (%s free, %s reserved)", ErrDiskFull, humanBytes(free), humanBytes(s.reserve))
	}
	return nil
}

// aboveFloor is what the raft log store checks: a quarter of the reserve.
func (s *diskSpace) aboveFloor() error {
	if free := s.refresh(false); free < s.reserve/4 {
		return fmt.Errorf("%w (%s free, below a quarter of the %s reserve: refusing raft entries)", ErrDiskFull, humanBytes(free), humanBytes(s.reserve))
	}
	return nil
}

// prepareBallast runs at Open, before Pebble: on a nearly full disk it
// deletes the ballast so that Pebble can replay its WAL and compact; with
// room to spare it (re)creates the ballast.
func (s *diskSpace) prepareBallast(size uint64) {
	path := filepath.Join(s.dir, ballastName)
	free, _, err := s.statfs(s.dir)
	if err != nil {
		return
	}
	fi, statErr := os.Stat(path)
	switch {
	case statErr == nil && free < s.reserve:
		if err := os.Remove(path); err == nil {
			s.log.Warn().Str("ballast", path).Int64("ballast_bytes", fi.Size()).
				Msg("log: disk nearly full at start: deleted the emergency ballast so the log can start; free space and it is recreated at the next start")
			if f, _, err := s.statfs(s.dir); err == nil {
				free = f
			}
		}
	case errors.Is(statErr, os.ErrNotExist) && size > 0 && free >= s.reserve+size:
		if err := createBallast(path, int64(size)); err != nil {
			s.log.Warn().Err(err).Str("ballast", path).Msg("log: could not create the emergency ballast file")
			os.Remove(path)
		} else if f, _, err := s.statfs(s.dir); err == nil {
			free = f
		}
	}
	s.store(free)
	if free < s.reserve {
		s.low.Store(true)
		s.log.Error().Uint64("free_bytes", free).Uint64("reserve_bytes", s.reserve).Str("dir", s.dir).
			Msgf("log: starting with a nearly full disk: reads are served, writes are refused until at least %s is freed on the filesystem holding %s", humanBytes(s.reserve-free), s.dir)
	}
}

// createBallast allocates size bytes for real (fallocate, or zeros where
// that is not supported), so deleting the file gives them back.
func createBallast(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fallocate(f, size); err != nil {
		zero := make([]byte, 1<<20)
		for left := size; left > 0; left -= int64(len(zero)) {
			if _, err := f.Write(zero[:min(int64(len(zero)), left)]); err != nil {
				return err
			}
		}
	}
	return f.Sync()
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
