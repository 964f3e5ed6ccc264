package projections

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
)

const (
	crashDirEnv   = "ENGRAM_PROJECTIONS_CRASH_DIR"
	crashCycleEnv = "ENGRAM_PROJECTIONS_CRASH_CYCLE"
	crashCycles   = 20
)

// crashProjections are what the child and the checker register. The
// second one changes version every three cycles, so some kills land in
// the middle of a shadow rebuild or of its switch; it writes unread
// rows too, which a rebuild keeps in a store of their own (scratch.go).
func crashProjections(cycle int) []*timeline {
	return []*timeline{
		{name: "timeline", version: 1},
		{name: "timeline-versioned", version: 1 + (cycle/3)%2, unread: true},
	}
}

// TestCrashRecovery SIGKILLs a process that appends to the real log while
// the engine applies, at random moments, and checks after each restart that
// every projection equals a fresh replay of the log.
func TestCrashRecovery(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		cycle, _ := strconv.Atoi(os.Getenv(crashCycleEnv))
		crashChild(dir, cycle)
		return
	}
	if testing.Short() {
		t.Skip("crash test re-executes the test binary 20 times")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var last uint64
	for cycle := 0; cycle < crashCycles; cycle++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashRecovery$")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashCycleEnv+"="+strconv.Itoa(cycle))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill at a random moment: sometimes during start-up and catch-up,
		// mostly while appending and applying.
		if rng.Intn(4) > 0 {
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil || line != "appending\n" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("cycle %d: child did not start (%q, %v): %s", cycle, line, err, stderr.String())
			}
		}
		time.Sleep(time.Duration(rng.Intn(150)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		last = checkCrashedStore(t, dir, cycle)
	}
	if last == 0 {
		t.Fatal("no entry was ever appended: the test checked nothing")
	}
	t.Logf("%d crash cycles, %d entries in the log", crashCycles, last)
}

// checkCrashedStore restarts on the killed process's data and compares
// every projection with a fresh replay. It returns the log's last offset.
func checkCrashedStore(t *testing.T, dir string, cycle int) uint64 {
	t.Helper()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: testLogger(t).Level(zerolog.ErrorLevel)})
	if err != nil {
		t.Fatalf("cycle %d: reopening the log: %v", cycle, err)
	}
	defer node.Close()
	e := NewEngine(node, node.DB(), testLogger(t), nil)
	defer e.Close()
	ps := crashProjections(cycle)
	for _, p := range ps {
		e.Register(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatalf("cycle %d: Start: %v", cycle, err)
	}
	last := node.LastOffset()
	for i, h := range e.Handles() {
		// A rebuild left unfinished by the kill finishes here.
		if err := h.WaitRebuilt(ctx); err != nil {
			t.Fatalf("cycle %d: %s: %v", cycle, h.Name(), err)
		}
		if err := h.WaitApplied(ctx, last); err != nil {
			t.Fatalf("cycle %d: %s: %v", cycle, h.Name(), err)
		}
		got, err := e.Digest(h.Name())
		if err != nil {
			t.Fatal(err)
		}
		fresh := &timeline{name: ps[i].name, version: ps[i].version, unread: ps[i].unread}
		if want := freshDigest(t, node, fresh); !bytes.Equal(got, want) {
			t.Fatalf("cycle %d: projection %s at offset %d differs from a fresh replay of the log", cycle, h.Name(), last)
		}
	}
	return last
}

// crashChild appends messages forever (until killed) with the engine
// running. It never returns normally.
func crashChild(dir string, cycle int) {
	logger := zerolog.New(os.Stderr).Level(zerolog.ErrorLevel)
	node, err := englog.Open(englog.Config{Dir: dir, Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	e := NewEngine(node, node.DB(), logger, nil)
	e.batchEntries = 64 // many commits, so kills land between them
	e.rebuildBatchEntries = 64
	for _, p := range crashProjections(cycle) {
		e.Register(p)
	}
	if err := e.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		os.Exit(2)
	}
	fmt.Println("appending")
	deadline := time.Now().Add(30 * time.Second) // never outlive a broken parent
	for w := 0; w < 3; w++ {
		go func(w int) {
			for i := 0; ; i++ {
				props := make([]englog.Proposal, 1+(i*7+w)%20)
				for j := range props {
					payload, _ := json.Marshal(message{
						Room:   fmt.Sprintf("!room%d:example.org", (i+j)%5),
						Sender: "@writer" + strconv.Itoa(w) + ":example.org",
						Body:   fmt.Sprintf("message %d.%d.%d", w, i, j),
					})
					props[j] = englog.Proposal{Kind: englog.KindPDU, Payload: payload}
				}
				if _, err := node.Append(context.Background(), props...); err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(2)
				}
			}
		}(w)
	}
	time.Sleep(time.Until(deadline))
	os.Exit(3)
}
