package notifications

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
)

// foldEntries folds entries into a fresh log and returns the projection's
// reader (open until the test ends).
func foldEntries(t *testing.T, entries []englog.Entry) projections.Reader {
	t.Helper()
	ctx := context.Background()
	l, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	props := make([]englog.Proposal, len(entries))
	for i, e := range entries {
		props[i] = englog.Proposal{Kind: e.Kind, Payload: e.Payload}
	}
	if _, err := l.Append(ctx, props...); err != nil {
		t.Fatal(err)
	}
	e := projections.NewEngine(l, l.DB(), zerolog.Nop(), nil)
	t.Cleanup(func() { e.Close() })
	h := e.Register(New("bench.localhost"))
	if err := e.Rebuild(ctx, Name); err != nil {
		t.Fatal(err)
	}
	return h.Reader()
}

// keysUnder is every key and value under prefix.
func keysUnder(t *testing.T, r projections.Reader, prefix []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	it := r.Iter(prefix, projections.PrefixEnd(prefix))
	for ok := it.First(); ok; ok = it.Next() {
		out[string(it.Key())] = string(it.Value())
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFederatedStateFromRecords folds a generated history twice: as it
// is, and with its first half turned into outliers (what a server that
// joined over federation holds of the room before its join) and each
// room's first event after that half carrying the room's state then
// (facts.PDU.StateBefore), as a join's send_join response or a gap's
// /state_ids gives it. The second fold starts each room from the state
// events' e records; the rooms' records, members and joined local users,
// and every notification after the reset, must be those of the first.
func TestFederatedStateFromRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 3, Users: 12, Rooms: 6, Events: 1500, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := l.Read(1, int(l.LastOffset()))
	l.Close()
	if err != nil {
		t.Fatal(err)
	}

	half := uint64(len(entries) / 2)
	type tuple struct{ typ, key string }
	state := map[string]map[tuple]string{} // room -> state as the first half leaves it
	reset := map[string]uint64{}           // room -> offset of the event that carries it
	joined := make([]englog.Entry, len(entries))
	for i, e := range entries {
		joined[i] = e
		if e.Kind != englog.KindPDU {
			continue
		}
		var f facts.PDU
		if err := facts.Decode(e, &f); err != nil {
			t.Fatal(err)
		}
		version, _ := stateres.Version(f.RoomVersion)
		ev, err := stateres.ParseTrustedEvent(version, f.Event, f.EventID)
		if err != nil {
			t.Fatal(err)
		}
		room := ev.RoomID()
		switch {
		case e.Offset <= half:
			f.Outlier = true
			if sk := ev.StateKey(); sk != nil {
				if state[room] == nil {
					state[room] = map[tuple]string{}
				}
				state[room][tuple{ev.Type(), *sk}] = ev.EventID()
			}
		case reset[room] == 0 && state[room] != nil:
			reset[room] = e.Offset
			for k, id := range state[room] {
				f.StateBefore = append(f.StateBefore, [3]string{k.typ, k.key, id})
			}
			slices.SortFunc(f.StateBefore, func(a, b [3]string) int {
				return bytes.Compare([]byte(a[0]+"\x00"+a[1]), []byte(b[0]+"\x00"+b[1]))
			})
		default:
			continue
		}
		joined[i] = englog.Entry{Kind: e.Kind, Payload: facts.MustEncode(englog.KindPDU, f).Payload}
	}
	if len(reset) == 0 {
		t.Fatal("no room has events on both sides of the half: nothing is reset")
	}

	want, got := foldEntries(t, entries), foldEntries(t, joined)
	for room := range reset {
		for _, pre := range []byte{pMember, pLocal} {
			w, g := keysUnder(t, want, projections.Key(pre, room, "")), keysUnder(t, got, projections.Key(pre, room, ""))
			if len(w) == 0 || !maps.Equal(g, w) {
				t.Errorf("%s: %c keys %d after the reset, %d when folded in full (they must be equal, and some)", room, pre, len(g), len(w))
			}
		}
		w, _, _ := want.Get(projections.Key(pRoom, room))
		g, _, _ := got.Get(projections.Key(pRoom, room))
		if len(w) == 0 || !bytes.Equal(g, w) {
			t.Errorf("%s: room record %s after the reset, %s when folded in full", room, g, w)
		}
	}
	compared := 0
	for i := range 12 {
		u := generate.UserID("bench.localhost", i)
		wn, err := NewView(want).Notifications(u, 0, 1<<30, false)
		if err != nil {
			t.Fatal(err)
		}
		gn, err := NewView(got).Notifications(u, 0, 1<<30, false)
		if err != nil {
			t.Fatal(err)
		}
		wn = slices.DeleteFunc(wn, func(n Notification) bool { return n.Offset <= reset[n.RoomID] })
		gn = slices.DeleteFunc(gn, func(n Notification) bool { return n.Offset <= reset[n.RoomID] })
		if len(gn) != len(wn) {
			t.Errorf("%s: %d notifications after the resets, %d when folded in full", u, len(gn), len(wn))
			continue
		}
		for j := range wn {
			if gn[j].EventID != wn[j].EventID || gn[j].Highlight != wn[j].Highlight || len(gn[j].Actions) != len(wn[j].Actions) {
				t.Errorf("%s: notification %d is %+v after the reset, %+v when folded in full", u, j, gn[j], wn[j])
			}
		}
		compared += len(wn)
	}
	if compared == 0 {
		t.Fatal("no notification after the resets: the comparison compared nothing")
	}
}
