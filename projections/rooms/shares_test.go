package rooms_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/rs/zerolog"
)

// TestSharesJoinedRoom: over a generated log (DMs, small groups, large
// rooms, joins and leaves), SharesJoinedRoom answers for every pair of
// users what their memberships say, both when the viewer is in few rooms
// (a point read per room) and when the viewer's room list is long (other's
// memberships listed): the long list is the viewer's rooms padded with
// rooms that do not exist.
func TestSharesJoinedRoom(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 11, Users: 40, Rooms: 12, Events: 2500, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	node, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(rooms.New(node, nil))
	if err := engine.Rebuild(ctx, "rooms"); err != nil {
		t.Fatal(err)
	}
	v := rooms.NewView(h.Reader(), node)
	users := make([]string, 40)
	joined := map[string][]string{}
	for i := range users {
		users[i] = fmt.Sprintf("@u%d:bench.localhost", i)
		ms, err := v.Memberships(users[i])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Membership == "join" {
				joined[users[i]] = append(joined[users[i]], m.RoomID)
			}
		}
		slices.Sort(joined[users[i]])
	}
	shared, apart := 0, 0
	for _, self := range users {
		padded := slices.Clone(joined[self])
		for k := range 40 {
			padded = append(padded, fmt.Sprintf("!padding%02d:nowhere", k))
		}
		slices.Sort(padded)
		for _, other := range users {
			want := self == other
			for _, r := range joined[self] {
				if slices.Contains(joined[other], r) {
					want = true
				}
			}
			for _, rooms := range [][]string{joined[self], padded} {
				got, err := v.SharesJoinedRoom(self, other, rooms)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Fatalf("SharesJoinedRoom(%s, %s) over %d rooms = %v, memberships say %v", self, other, len(rooms), got, want)
				}
			}
			if want {
				shared++
			} else {
				apart++
			}
		}
	}
	if shared <= len(users) || apart == 0 {
		t.Fatalf("the log gives no contrast: %d pairs share a room, %d do not", shared, apart)
	}
}

// TestJoinedServers: over a generated log, JoinedServers names exactly the
// servers of each room's joined members (ServersInRoom, which reads every
// member), and none when the one server is skipped.
func TestJoinedServers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 12, Users: 30, Rooms: 10, Events: 1500, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	node, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(rooms.New(node, nil))
	if err := engine.Rebuild(ctx, "rooms"); err != nil {
		t.Fatal(err)
	}
	v := rooms.NewView(h.Reader(), node)
	ids, err := v.RoomIDs()
	if err != nil {
		t.Fatal(err)
	}
	withMembers := 0
	for _, room := range ids {
		want, err := v.ServersInRoom(room, "")
		if err != nil {
			t.Fatal(err)
		}
		got, err := v.JoinedServers(room, "")
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("JoinedServers(%s) = %v, the joined members' servers are %v", room, got, want)
		}
		if len(want) > 0 {
			withMembers++
		}
		if skipped, err := v.JoinedServers(room, "bench.localhost"); err != nil || len(skipped) != 0 {
			t.Fatalf("JoinedServers(%s) skipping the only server = %v, %v", room, skipped, err)
		}
		for _, server := range []string{"bench.localhost", "localhost", "other.example"} {
			if got, err := v.HasJoinedMember(room, server); err != nil || got != slices.Contains(want, server) {
				t.Fatalf("HasJoinedMember(%s, %s) = %v, %v; the joined members' servers are %v", room, server, got, err, want)
			}
		}
	}
	if withMembers == 0 {
		t.Fatal("no room with joined members in the generated log")
	}
}
