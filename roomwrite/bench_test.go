package roomwrite

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWriterSend: 20 senders, one room each, send messages with a
// transaction ID through Writer.Send (build, hash, sign, authorise,
// append, wait for the rooms fold), closed loop. It reports the process
// CPU per send, which the machine's other load disturbs less than wall
// time: the send path's own cost, the rooms fold and the log included.
func BenchmarkWriterSend(b *testing.B) {
	r := newRig(b)
	const senders = 20
	rooms := make([]string, senders)
	for i := range rooms {
		rooms[i] = r.createRoom(b, user(fmt.Sprintf("s%d", i)), "10")
	}
	content := json.RawMessage(`{"msgtype":"m.text","body":"a message of about sixty-four bytes, like a short chat line"}`)
	var next sync.Mutex
	n := 0
	b.ResetTimer()
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := user(fmt.Sprintf("s%d", i))
			for k := 0; ; k++ {
				next.Lock()
				if n >= b.N {
					next.Unlock()
					return
				}
				n++
				next.Unlock()
				txn := &facts.TxnRef{UserID: u, DeviceID: "D", TxnID: fmt.Sprintf("t%d", k)}
				if _, err := r.w.Send(context.Background(), stateres.ProtoEvent{Type: "m.room.message", Sender: u, RoomID: rooms[i], Content: content}, txn); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu_µs/send")
}
