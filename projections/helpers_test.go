package projections

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
)

func openDB(t testing.TB, dir string) *pebble.DB {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

type quietPebble struct{}

func (quietPebble) Infof(string, ...interface{})  {}
func (quietPebble) Errorf(string, ...interface{}) {}
func (quietPebble) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf(format, args...))
}

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// message is the payload of the test entries: a room message.
type message struct {
	Room   string `json:"room_id"`
	Sender string `json:"sender"`
	Body   string `json:"body"`
	Fail   bool   `json:"fail,omitempty"`
}

func appendMessages(t testing.TB, l englog.Log, n int, room string) []uint64 {
	t.Helper()
	props := make([]englog.Proposal, n)
	for i := range props {
		payload, _ := json.Marshal(message{Room: room, Sender: "@alice:example.org", Body: "hello " + strconv.Itoa(i)})
		props[i] = englog.Proposal{Kind: englog.KindPDU, Payload: payload}
	}
	offs, err := l.Append(context.Background(), props...)
	if err != nil {
		t.Fatal(err)
	}
	return offs
}

// timeline is a realistic test projection: per room, an index of messages
// by offset and a message counter (read back from the batch, exercising
// read-your-own-writes inside Apply). Version 2 stores bodies upper-cased
// under a different prefix, to tell generations apart.
type timeline struct {
	name    string
	version int
	// gate, when set, is received from before applying each batch, to
	// hold a rebuild mid-way.
	gate chan struct{}
	// readsOld makes it ReadCompatible with every older version.
	readsOld bool
	// unread also writes each body unread (SetUnread), and at every
	// third offset deletes the unread row of the one before
	// (DeleteUnread): of the batch or of an earlier one.
	unread bool
	// firstApplied records the first offset of every Apply call.
	mu           sync.Mutex
	firstApplied []uint64
	committed    atomic.Uint64
}

func (p *timeline) Name() string { return p.name }
func (p *timeline) Version() int { return p.version }

func (p *timeline) Apply(w Writer, entries []englog.Entry) error {
	if p.gate != nil {
		<-p.gate
	}
	p.mu.Lock()
	p.firstApplied = append(p.firstApplied, entries[0].Offset)
	p.mu.Unlock()
	for _, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		var m message
		if err := json.Unmarshal(e.Payload, &m); err != nil {
			return err
		}
		if m.Fail {
			return errors.New("test projection refuses this entry")
		}
		body := m.Body
		prefix := "t/"
		if p.version >= 2 {
			prefix = "T/"
			body = fmt.Sprintf("%s@%d", body, e.Time)
		}
		key := binary.BigEndian.AppendUint64([]byte(prefix+m.Room+"\x00"), e.Offset)
		if err := w.Set(key, []byte(body)); err != nil {
			return err
		}
		if p.unread {
			uKey := func(off uint64) []byte { return binary.BigEndian.AppendUint64([]byte("u/"+m.Room+"\x00"), off) }
			if err := SetUnread(w, uKey(e.Offset), []byte(body)); err != nil {
				return err
			}
			if e.Offset%3 == 0 {
				if err := DeleteUnread(w, uKey(e.Offset-1)); err != nil {
					return err
				}
			}
		}
		countKey := []byte("count/" + m.Room)
		n := uint64(0)
		if v, ok, err := w.Get(countKey); err != nil {
			return err
		} else if ok {
			n = binary.BigEndian.Uint64(v)
		}
		if err := w.Set(countKey, binary.BigEndian.AppendUint64(nil, n+1)); err != nil {
			return err
		}
	}
	return nil
}

func (p *timeline) AfterCommit(entries []englog.Entry) {
	p.committed.Store(entries[len(entries)-1].Offset)
}

func (p *timeline) ReadsVersion(int) bool { return p.readsOld }

func (p *timeline) applyStarts() []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]uint64(nil), p.firstApplied...)
}

func roomCount(t testing.TB, r Reader, room string) uint64 {
	t.Helper()
	v, ok, err := r.Get([]byte("count/" + room))
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// mustDigest is e.Digest(name), failing the test on an error (a nil digest
// from two failed calls would compare equal).
func mustDigest(t testing.TB, e *Engine, name string) []byte {
	t.Helper()
	d, err := e.Digest(name)
	if err != nil {
		t.Fatalf("digest of %s: %v", name, err)
	}
	return d
}
