package synccache

import (
	"errors"
	"fmt"
	"testing"

	"github.com/engram-hs/engram/projections/rooms"
)

// A change is noted at its batch's last offset; a batch that does not
// follow its source's previous one moves the horizon past itself and
// resets the caches.
func TestClockNotesAndHorizon(t *testing.T) {
	c := NewClock()
	c.Attach("rooms", 10)
	c.Attach("userdata", 7)
	resets := 0
	c.OnReset(func() { resets++ })
	c.Note(Batch{Source: "rooms", First: 11, Last: 12, Rooms: []string{"!a", "!m"}, Members: []string{"@u"}, MemberRooms: []string{"!m"}})
	c.Note(Batch{Source: "userdata", First: 8, Last: 13, Ephemeral: []string{"!b"}, RoomData: []UserRoom{{"@u", "!c"}}, AccountData: []string{"@u"}})
	c.Read(func(v View) {
		if v.Covers(9) || !v.Covers(10) {
			t.Error("the horizon is not the newest attached checkpoint")
		}
		if v.RoomChangedAt("!a") != 12 || v.RoomChangedAt("!b") != 13 || v.MembersChangedAt("!m") != 12 || v.MembersChangedAt("!a") != 0 {
			t.Error("room changes are not noted at their batch's last offset")
		}
		if v.EphemeralChangedAt("!b") != 13 || v.EphemeralChangedAt("!a") != 0 {
			t.Error("typing and receipts are not noted apart from the room's events")
		}
		if v.RoomDataChangedAt("@u", "!c") != 13 || v.AccountDataChangedAt("@u") != 13 || v.RoomDataChangedAt("@u", "!a") != 0 {
			t.Error("account data changes are not noted per user and room")
		}
	})
	if resets != 0 {
		t.Fatalf("%d resets for batches that follow their sources", resets)
	}
	c.Note(Batch{Source: "rooms", First: 20, Last: 30})
	c.Note(Batch{Source: "unknown", First: 31, Last: 31})
	c.Read(func(v View) {
		if v.Covers(29) || !v.Covers(31) {
			t.Error("skipped offsets did not move the horizon past the batch")
		}
	})
	if resets != 2 {
		t.Fatalf("%d resets, want 2", resets)
	}
}

// A list is cached until its user's membership changes; a list read
// before a drop is not stored after it; a read error is returned, and
// nothing is cached for it.
func TestMembersCache(t *testing.T) {
	m := NewMembers(1 << 20)
	reads := 0
	list := []rooms.Membership{{RoomID: "!a", Membership: "join"}}
	read := func() ([]rooms.Membership, error) { reads++; return list, nil }
	for range 3 {
		if got, err := m.Get("@u", read); err != nil || len(got) != 1 {
			t.Fatal(got, err)
		}
	}
	if reads != 1 {
		t.Fatalf("%d reads for three gets", reads)
	}
	m.Drop([]string{"@u"})
	if _, err := m.Get("@u", read); err != nil || reads != 2 {
		t.Fatal("a dropped list was served from the cache")
	}
	// A drop while the list is being read: the list read may predate the
	// change, so it must not be kept.
	racing := func() ([]rooms.Membership, error) { m.Drop([]string{"@v"}); reads++; return nil, nil }
	_, _ = m.Get("@v", racing)
	_, _ = m.Get("@v", racing)
	if reads != 4 {
		t.Fatalf("a list read across a drop was cached (%d reads)", reads)
	}
	boom := errors.New("boom")
	if _, err := m.Get("@w", func() ([]rooms.Membership, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("read error not returned: %v", err)
	}
	if _, err := m.Get("@w", read); err != nil || reads != 5 {
		t.Fatal("a failed read was cached")
	}
	m.Reset()
	if _, err := m.Get("@u", read); err != nil || reads != 6 {
		t.Fatal("Reset kept a list")
	}
}

// A part is computed once per position of its room.
func TestParts(t *testing.T) {
	p := NewParts(1 << 20)
	computed := 0
	compute := func() (any, int, error) { computed++; return []string{"@a"}, 40, nil }
	k := PartKey{Kind: "summary", Room: "!a"}
	for range 3 {
		if v, err := p.Get(k, 5, compute); err != nil || len(v.([]string)) != 1 {
			t.Fatal(v, err)
		}
	}
	if _, _ = p.Get(k, 6, compute); computed != 2 {
		t.Fatalf("%d computations for two positions", computed)
	}
	if _, _ = p.Get(PartKey{Kind: "summary", Room: "!b"}, 6, compute); computed != 3 {
		t.Fatal("two rooms shared a part")
	}
	p.Reset()
	if _, _ = p.Get(k, 6, compute); computed != 4 {
		t.Fatal("Reset kept a part")
	}
	boom := errors.New("boom")
	if _, err := p.Get(PartKey{Kind: "x"}, 1, func() (any, int, error) { return nil, 0, boom }); !errors.Is(err, boom) {
		t.Fatal("a compute error was not returned")
	}
}

// The caches keep what their budget holds, by the sizes their callers
// give: past it the older generation goes, an entry used since stays, and
// one larger than half the budget is never kept.
func TestCachesBoundedByBytes(t *testing.T) {
	const budget = 10_000
	e := NewEvents(budget)
	formats := map[string]int{}
	get := func(key string, size int) {
		e.Get(key, 0, func() (any, int) { formats[key]++; return key, size })
	}
	get("$kept", 500)
	for i := range 40 {
		get(fmt.Sprintf("$e%d", i), 500)
		get("$kept", 500) // in use: moves back into the current generation
	}
	if n, _ := e.Stats(); n > budget {
		t.Fatalf("the events kept hold %d bytes, over the budget of %d", n, budget)
	}
	if formats["$kept"] != 1 {
		t.Fatalf("an event in use was formatted %d times", formats["$kept"])
	}
	if get("$e0", 500); formats["$e0"] != 2 {
		t.Fatal("the oldest event outlived the budget")
	}
	get("$big", budget/2)
	get("$big", budget/2)
	if formats["$big"] != 2 {
		t.Fatal("an event larger than half the budget was kept")
	}

	p := NewParts(budget)
	for i := range 100 {
		if _, err := p.Get(PartKey{Kind: "state", Room: fmt.Sprint("!", i)}, 1, func() (any, int, error) { return i, 300, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if n, computed := p.Stats(); n == 0 || n > budget || computed != 100 {
		t.Fatalf("the parts kept hold %d bytes, budget %d", n, budget)
	}

	m := NewMembers(budget)
	list := []rooms.Membership{{RoomID: "!room:example.org", Membership: "join", EventID: "$event"}}
	for i := range 200 {
		if _, err := m.Get(fmt.Sprint("@u", i), func() ([]rooms.Membership, error) { return list, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := m.Stats(); n == 0 || n > budget {
		t.Fatalf("the lists kept hold %d bytes, budget %d", n, budget)
	}
}
