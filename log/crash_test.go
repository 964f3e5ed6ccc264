package log

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"
)

const crashChildEnv = "ENGRAM_LOG_CRASH_CHILD_DIR"

// crashPayload is self-verifying: its last 32 bytes are the SHA-256 of the
// rest, so even entries that were never acknowledged can be checked.
func crashPayload(cycle, worker, i int) []byte {
	body := []byte(fmt.Sprintf(`{"cycle":%d,"worker":%d,"i":%d,"text":"%s"}`, cycle, worker, i,
		strings.Repeat("lorem ipsum ", 1+(worker*7+i)%40)))
	sum := sha256.Sum256(body)
	return append(body, sum[:]...)
}

func payloadIntact(p []byte) bool {
	if len(p) < 32 {
		return false
	}
	sum := sha256.Sum256(p[:len(p)-32])
	return bytes.Equal(sum[:], p[len(p)-32:])
}

func payloadHash(p []byte) string {
	sum := sha256.Sum256(p)
	return hex.EncodeToString(sum[:8])
}

// runCrashChild appends from many goroutines until killed, printing
// "offset hash" for every acknowledged entry.
func runCrashChild(dir string, cycle int) {
	// Frequent snapshots and compaction, so kills also land around them.
	n, err := Open(Config{Dir: dir, Logger: zerolog.New(os.Stderr).Level(zerolog.WarnLevel), tune: func(c *raft.Config) {
		c.SnapshotInterval = 50 * time.Millisecond
		c.SnapshotThreshold = 512
		c.TrailingLogs = 64
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				props := []Proposal{{Kind: KindPDU, Payload: crashPayload(cycle, w, i)}}
				if i%5 == 0 { // some multi-entry appends
					props = append(props, Proposal{Kind: KindEDU, Payload: crashPayload(cycle, w+100, i)})
				}
				offs, err := n.Append(context.Background(), props...)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(4)
				}
				var line []byte
				for j, o := range offs {
					line = fmt.Appendf(line, "%d %s\n", o, payloadHash(props[j].Payload))
				}
				mu.Lock()
				// One write per acknowledgement: a kill tears at most the
				// last line, which the parent discards.
				os.Stdout.Write(line)
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
}

func TestCrashSafetyKill9(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		cycle, _ := strconv.Atoi(os.Getenv(crashChildEnv + "_CYCLE"))
		runCrashChild(dir, cycle)
		return
	}
	if testing.Short() {
		t.Skip("kills child processes; skipped in -short")
	}
	dir := t.TempDir()
	acked := map[uint64]string{}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	const cycles = 20
	for cycle := 0; cycle < cycles; cycle++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafetyKill9$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, crashChildEnv+"_CYCLE="+strconv.Itoa(cycle))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1<<16)
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// Kill at a random moment after the first acknowledgement.
		var got []string
		select {
		case l := <-lines:
			got = append(got, l)
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("cycle %d: child acknowledged nothing in 20s; stderr:\n%s", cycle, stderr.String())
		}
		time.Sleep(time.Duration(rng.Intn(250)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-readDone
		_ = cmd.Wait()
		close(lines)
		for l := range lines {
			got = append(got, l)
		}
		for _, l := range got {
			f := strings.Fields(l)
			if len(f) != 2 {
				continue // torn last line: never acknowledged to us
			}
			off, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil || len(f[1]) != 16 {
				continue
			}
			if prev, dup := acked[off]; dup && prev != f[1] {
				t.Fatalf("cycle %d: offset %d acknowledged twice with different payloads", cycle, off)
			}
			acked[off] = f[1]
		}
		if strings.Contains(stderr.String(), "child ") {
			t.Fatalf("cycle %d: child failed:\n%s", cycle, stderr.String())
		}

		// Reopen and check: every acknowledged entry, dense, intact.
		n := openSingle(t, dir)
		last := n.LastOffset()
		for off := uint64(1); off <= last; off += 1000 {
			es, err := n.Read(off, 1000)
			if err != nil {
				t.Fatalf("cycle %d: Read(%d): %v", cycle, off, err)
			}
			for i, e := range es {
				if e.Offset != off+uint64(i) {
					t.Fatalf("cycle %d: gap: got offset %d, want %d", cycle, e.Offset, off+uint64(i))
				}
				if !payloadIntact(e.Payload) {
					t.Fatalf("cycle %d: entry %d is torn", cycle, e.Offset)
				}
				if h, ok := acked[e.Offset]; ok && h != payloadHash(e.Payload) {
					t.Fatalf("cycle %d: entry %d differs from what was acknowledged", cycle, e.Offset)
				}
			}
		}
		for off := range acked {
			if off > last {
				t.Fatalf("cycle %d: acknowledged offset %d lost (log ends at %d)", cycle, off, last)
			}
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("cycle %d: %d acknowledged so far, log ends at %d", cycle, len(acked), last)
	}
	if snaps, _ := os.ReadDir(filepath.Join(dir, "raft-snapshots")); len(snaps) == 0 {
		t.Fatal("no raft snapshot was taken during the crash cycles; the compaction path went untested")
	}
	if len(acked) < cycles {
		t.Fatalf("only %d entries acknowledged over %d cycles", len(acked), cycles)
	}
}
