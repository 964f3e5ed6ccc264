package log

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// benchEntries is ENGRAM_BENCH_ENTRIES, or def.
func benchEntries(def int) int {
	if n, err := strconv.Atoi(os.Getenv("ENGRAM_BENCH_ENTRIES")); err == nil && n > 0 {
		return n
	}
	return def
}

// BenchmarkRestoreLog: a backup of N m.room.message PDUs (default
// 1,000,000; ENGRAM_BENCH_ENTRIES) restored into a new log, checksums
// checked, and the restored log opened. The projections' replay after it
// is `engram bench replay` (bench/README.md). Runs once whatever b.N is.
func BenchmarkRestoreLog(b *testing.B) {
	total := benchEntries(1_000_000)
	dir := b.TempDir()
	backup := filepath.Join(dir, "backup")
	g := newPDUGen(11)
	m := BackupManifest{Format: backupFormat}
	var payloadBytes int64
	const seg = 100_000
	for off := 1; off <= total; off += seg {
		batch := make([]Entry, 0, seg)
		for o := off; o < off+seg && o <= total; o++ {
			p := g.next()
			payloadBytes += int64(len(p))
			batch = append(batch, Entry{Offset: uint64(o), Kind: KindPDU, Time: 1_700_000_000_000 + int64(o), Payload: p})
		}
		if err := WriteBackupSegment(backup, &m, batch); err != nil {
			b.Fatal(err)
		}
	}
	var backupBytes int64
	for _, s := range m.Segments {
		backupBytes += s.Bytes
	}
	b.ResetTimer()
	started := time.Now()
	si, pending := 0, []Entry(nil)
	var readErr error
	last, err := ImportLog(filepath.Join(dir, "restored"), func() (Entry, bool, error) {
		for len(pending) == 0 {
			if si == len(m.Segments) || readErr != nil {
				return Entry{}, false, readErr
			}
			readErr = ReadBackupSegment(backup, m.Segments[si], func(e Entry) bool { pending = append(pending, e); return true })
			si++
		}
		e := pending[0]
		pending = pending[1:]
		return e, true, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	imported := time.Since(started)
	n, err := Open(Config{Dir: filepath.Join(dir, "restored"), Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	if n.LastOffset() != uint64(total) || last != uint64(total) {
		b.Fatalf("restored %d entries, want %d", n.LastOffset(), total)
	}
	n.Close()
	secs := time.Since(started).Seconds()
	b.StopTimer()
	line, _ := json.Marshal(map[string]any{
		"bench": "restore_log", "entries": total, "payload_bytes": payloadBytes, "backup_bytes": backupBytes,
		"import_seconds": imported.Seconds(), "seconds": secs, "entries_per_s": float64(total) / secs,
	})
	fmt.Println(string(line))
	b.ReportMetric(secs, "s")
}

// BenchmarkIncrementalBackup: a backup of a 50,000-entry log, then 10,000
// new entries appended and a second backup run, which writes only them.
// Runs once whatever b.N is.
func BenchmarkIncrementalBackup(b *testing.B) {
	dir := b.TempDir()
	n := quietNode(b, filepath.Join(dir, "log"))
	defer n.Close()
	g := newPDUGen(12)
	appendN := func(k int) {
		var wg sync.WaitGroup
		ch := make(chan []byte, 256)
		for a := 0; a < 64; a++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := range ch {
					if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: p}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		for i := 0; i < k; i++ {
			ch <- g.next()
		}
		close(ch)
		wg.Wait()
	}
	backup := filepath.Join(dir, "backup")
	run := func() (uint64, time.Duration) {
		started := time.Now()
		m, err := ReadBackupManifest(backup)
		if err != nil {
			b.Fatal(err)
		}
		before := m.LastOffset()
		for {
			page, err := n.Read(m.LastOffset()+1, 20000)
			if err != nil {
				b.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			if err := WriteBackupSegment(backup, &m, page); err != nil {
				b.Fatal(err)
			}
		}
		return m.LastOffset() - before, time.Since(started)
	}
	appendN(50_000)
	fullN, fullT := run()
	appendN(10_000)
	b.ResetTimer()
	incN, incT := run()
	b.StopTimer()
	line, _ := json.Marshal(map[string]any{
		"bench": "incremental_backup", "full_entries": fullN, "full_seconds": fullT.Seconds(),
		"new_entries": incN, "incremental_seconds": incT.Seconds(), "new_entries_per_s": float64(incN) / incT.Seconds(),
	})
	fmt.Println(string(line))
	b.ReportMetric(incT.Seconds(), "s")
}

// BenchmarkClusterVsSingle: 64 appenders of one entry each for 3 s on a
// single node, then on the leader of a three-node mutual-TLS cluster on
// loopback, in one run; the ratio is the figure (target >= 0.5).
func BenchmarkClusterVsSingle(b *testing.B) {
	g := newPDUGen(13)
	payloads := make([][]byte, 512)
	for i := range payloads {
		payloads[i] = g.next()
	}
	rate := func(n *Node) float64 {
		var count atomic.Int64
		var wg sync.WaitGroup
		deadline := time.Now().Add(3 * time.Second)
		for a := 0; a < 64; a++ {
			wg.Add(1)
			go func(a int) {
				defer wg.Done()
				for i := a; time.Now().Before(deadline); i++ {
					if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: payloads[i%len(payloads)]}); err != nil {
						b.Error(err)
						return
					}
					count.Add(1)
				}
			}(a)
		}
		wg.Wait()
		return float64(count.Load()) / 3
	}
	single := quietNode(b, b.TempDir())
	singleRate := rate(single)
	single.Close()

	c := newTestCluster(b)
	clusterRate := rate(c.nodes[c.leader()])
	line, _ := json.Marshal(map[string]any{
		"bench": "cluster_vs_single", "appenders": 64, "single_entries_per_s": singleRate,
		"cluster_entries_per_s": clusterRate, "ratio": clusterRate / singleRate,
	})
	fmt.Println(string(line))
	b.ReportMetric(clusterRate/singleRate, "ratio")
}
