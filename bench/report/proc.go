package report

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcStatusKB reads one "Vm..." field (kB) of /proc/<pid>/status; pid 0
// means this process. VmHWM is the peak resident set, VmRSS the current.
func ProcStatusKB(pid int, field string) (int64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read %s (RSS figures need Linux /proc): %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, field+":") {
			continue
		}
		fs := strings.Fields(line[len(field)+1:])
		if len(fs) == 0 {
			break
		}
		return strconv.ParseInt(fs[0], 10, 64)
	}
	return 0, fmt.Errorf("%s has no %s field", path, field)
}

// ProcCPUSeconds reads the user and system CPU time of a process from
// /proc/<pid>/stat. The kernel reports it in USER_HZ ticks, which Linux
// fixes at 100 per second for every architecture's /proc.
func ProcCPUSeconds(pid int) (float64, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s (CPU figures need Linux /proc): %w", path, err)
	}
	// The command name (field 2) may hold spaces; fields are counted from
	// its closing parenthesis, after which state is field 3.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	fs := strings.Fields(string(data[i+1:]))
	if len(fs) < 13 {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	var ticks int64
	for _, f := range fs[11:13] { // utime (field 14), stime (field 15)
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		ticks += n
	}
	return float64(ticks) / 100, nil
}

// Percentile returns the p-th percentile (0..100) of durations, by the
// nearest-rank method; 0 for an empty set. It sorts ds in place.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	rank := int(p/100*float64(len(ds)) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	if rank > len(ds) {
		rank = len(ds)
	}
	return ds[rank-1]
}

// LoadAverage is the machine's 1, 5 and 15 minute load averages from
// /proc/loadavg, or nil where there is none. Every figure carries it: on
// a shared machine a figure means little without the load it was
// measured at.
func LoadAverage() []float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return nil
	}
	fs := strings.Fields(string(raw))
	if len(fs) < 3 {
		return nil
	}
	out := make([]float64, 3)
	for i := range out {
		v, err := strconv.ParseFloat(fs[i], 64)
		if err != nil {
			return nil
		}
		out[i] = v
	}
	return out
}

// MS converts a duration to float milliseconds.
func MS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BallastFile is the name of the log's emergency ballast (a reserve of
// free space, not data), which DiskUsage counts apart.
const BallastFile = "EMERGENCY_BALLAST"

// DiskUsage is what the files under dir occupy on disk (allocated blocks,
// as du counts them, so preallocated space counts too), with the log's
// emergency ballast counted apart from the data.
func DiskUsage(dir string) (data, ballast int64, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) { // removed meanwhile (a compacted table)
				return nil
			}
			return err
		}
		n := fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n = st.Blocks * 512
		}
		if d.Name() == BallastFile {
			ballast += n
		} else {
			data += n
		}
		return nil
	})
	return data, ballast, err
}
