package synccache

import (
	"errors"
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
	m := NewMembers(10)
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
	p := NewParts()
	computed := 0
	compute := func() (any, error) { computed++; return []string{"@a"}, nil }
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
	if _, err := p.Get(PartKey{Kind: "x"}, 1, func() (any, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatal("a compute error was not returned")
	}
}
