package notifications

import (
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"testing"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
)

// unreadByScan is how View.Unread counted before the counts were kept
// (version 4): every unread entry of the room, against the floors. The
// oracle the kept counts must match.
func unreadByScan(t *testing.T, r projections.Reader, userID, roomID string, withThreads bool) (Count, map[string]Count) {
	t.Helper()
	f, err := floorsOf(r, userID, roomID)
	if err != nil {
		t.Fatal(err)
	}
	prefix := projections.Key(pUnread, userID, roomID, "")
	lower := binary.BigEndian.AppendUint64(bytes.Clone(prefix), f[""]+1)
	it := r.Iter(lower, projections.PrefixEnd(prefix))
	var main Count
	threads := map[string]Count{}
	for ok := it.First(); ok; ok = it.Next() {
		off, thread, hl, ok := unreadEntry(prefix, it.Key(), it.Value())
		if !ok || off <= f[thread] {
			continue
		}
		c := &main
		var tc Count
		if withThreads && thread != ScopeMain {
			tc = threads[thread]
			c = &tc
		}
		c.Notifications++
		if hl {
			c.Highlights++
		}
		if withThreads && thread != ScopeMain {
			threads[thread] = tc
		}
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	return main, threads
}

// TestUnreadCountsMatchAScan folds a generated history (messages, and
// read receipts that read some of them) and holds every user's counts in
// every room they have notifications, floors or counts in to a scan of
// their unread entries, with and without thread counts; and UnreadRooms
// to the rooms the scan finds unread.
func TestUnreadCountsMatchAScan(t *testing.T) {
	ctx := context.Background()
	const users = 12
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 7, Users: users, Rooms: 6, Events: 2000, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := projections.NewEngine(l, l.DB(), zerolog.Nop(), nil)
	defer e.Close()
	h := e.Register(New("bench.localhost"))
	if err := e.Rebuild(ctx, Name); err != nil {
		t.Fatal(err)
	}
	r := h.Reader()
	v := NewView(r)
	counted := 0
	for i := range users {
		u := generate.UserID("bench.localhost", i)
		rooms := map[string]bool{}
		for _, pre := range []byte{pUnread, pFloor, pCount} {
			prefix := projections.Key(pre, u, "")
			it := r.Iter(prefix, projections.PrefixEnd(prefix))
			for ok := it.First(); ok; ok = it.Next() {
				room, _, _ := bytes.Cut(it.Key()[len(prefix):], []byte{0})
				rooms[string(room)] = true
			}
			if err := it.Close(); err != nil {
				t.Fatal(err)
			}
		}
		unreadRooms := 0
		for room := range rooms {
			for _, withThreads := range []bool{false, true} {
				main, threads, err := v.Unread(u, room, withThreads)
				if err != nil {
					t.Fatal(err)
				}
				wantMain, wantThreads := unreadByScan(t, r, u, room, withThreads)
				if main != wantMain || !maps.Equal(threads, wantThreads) {
					t.Errorf("%s in %s (threads %v): counts %+v %v, a scan finds %+v %v", u, room, withThreads, main, threads, wantMain, wantThreads)
				}
				if !withThreads && main.Notifications > 0 {
					unreadRooms++
					counted += int(main.Notifications)
				}
			}
		}
		if n, err := v.UnreadRooms(u); err != nil || n != unreadRooms {
			t.Errorf("%s: UnreadRooms %d (%v), a scan finds %d", u, n, err, unreadRooms)
		}
	}
	if counted == 0 {
		t.Fatal("the generated history left nothing unread: the comparison compared nothing")
	}
}
