package roomwrite

import (
	"context"
	"errors"
	"testing"

	"github.com/engram-hs/engram/internal/mxerr"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

// JoinAuthoriser on real rooms of a real Writer (rw.test), against the
// state each restricted room has now:
//   - allowed: alice (local, power 100) and bob@remote.test joined;
//   - left: bob@remote.test joined, and this server's only user left, so
//     its copy no longer says who is in it;
//   - the restricted rooms differ in version, join rule, allow list and
//     in whether a joined local user may invite.
func TestJoinAuthoriser(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	alice, carol, gina, zed := user("alice"), user("carol"), user("gina"), user("zed")
	bob, frank := "@bob:remote.test", "@frank:remote.test"
	send := func(roomID, sender, typ, stateKey string, content any) {
		t.Helper()
		if _, err := r.w.Send(ctx, stateres.ProtoEvent{Type: typ, StateKey: strptr(stateKey), Sender: sender, RoomID: roomID, Content: mustJSON(content)}, nil); err != nil {
			t.Fatalf("%s sends %s in %s: %v", sender, typ, roomID, err)
		}
	}
	remoteJoins := func(roomID string) {
		t.Helper()
		ev := remoteJoin(t, r.w, roomID) // @bob:remote.test
		room, _ := r.w.View().Room(roomID)
		if _, err := r.w.Receive(ctx, []facts.PDU{{RoomVersion: room.Version, Event: ev.JSON(), EventID: ev.EventID()}}); err != nil {
			t.Fatal(err)
		}
	}
	restrict := func(roomID, rule string, allow ...string) {
		t.Helper()
		entries := []map[string]string{}
		for _, a := range allow {
			entries = append(entries, map[string]string{"type": "m.room_membership", "room_id": a})
		}
		send(roomID, alice, stateres.MRoomJoinRules, "", map[string]any{"join_rule": rule, "allow": entries})
	}

	allowed := r.createRoom(t, alice, "10")
	remoteJoins(allowed)
	left := r.createRoom(t, zed, "10")
	remoteJoins(left)
	send(left, zed, stateres.MRoomMember, zed, map[string]string{"membership": "leave"})

	restricted := r.createRoom(t, alice, "10")
	send(restricted, alice, stateres.MRoomMember, gina, map[string]string{"membership": "invite"})
	restrict(restricted, "restricted", allowed)

	knockRestricted := r.createRoom(t, alice, "10")
	restrict(knockRestricted, "knock_restricted", allowed)

	// v9 has restricted joins but not knock_restricted: the rule is
	// unknown there, so it needs no authoriser (and auth refuses it).
	knockRestrictedV9 := r.createRoom(t, alice, "9")
	restrict(knockRestrictedV9, "knock_restricted", allowed)

	// v7 predates restricted joins.
	restrictedV7 := r.createRoom(t, alice, "7")
	restrict(restrictedV7, "restricted", allowed)

	// Inviting takes power 50; carol (0) is the only local user left.
	noInviter := r.createRoom(t, alice, "10")
	r.join(t, noInviter, carol)
	send(noInviter, alice, stateres.MRoomPowerLevels, "", map[string]any{"users": map[string]int{alice: 100}, "invite": 50, "state_default": 50})
	restrict(noInviter, "restricted", allowed)
	send(noInviter, alice, stateres.MRoomMember, alice, map[string]string{"membership": "leave"})

	onlyLeft := r.createRoom(t, alice, "10")
	restrict(onlyLeft, "restricted", left)

	noAllow := r.createRoom(t, alice, "10")
	restrict(noAllow, "restricted")

	public := r.createRoom(t, alice, "10")

	for _, tc := range []struct {
		name, room, user string
		want             string // the authoriser, or the errcode
	}{
		{"remote member of the allowed room", restricted, bob, alice},
		{"remote member, knock_restricted", knockRestricted, bob, alice},
		{"remote user in no allowed room", restricted, frank, "M_FORBIDDEN"},
		{"local user in no allowed room", restricted, zed, "M_FORBIDDEN"},
		{"already joined", restricted, alice, ""},
		{"invited", restricted, gina, ""},
		{"public room", public, bob, ""},
		{"knock_restricted before v10", knockRestrictedV9, bob, ""},
		{"restricted before v8", restrictedV7, bob, ""},
		{"no local user may invite", noInviter, bob, ErrUnableToGrantJoin},
		{"the allowed room was left here: remote user", onlyLeft, bob, ErrUnableToGrantJoin},
		{"the allowed room was left here: local user", onlyLeft, carol, "M_FORBIDDEN"},
		{"no allowed room: remote user", noAllow, bob, "M_FORBIDDEN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := r.w.View()
			room, err := v.Room(tc.room)
			if err != nil || room == nil {
				t.Fatalf("room %s: %v", tc.room, err)
			}
			version, _ := stateres.Version(room.Version)
			cur, err := v.CurrentStateIDs(tc.room)
			if err != nil {
				t.Fatal(err)
			}
			got, err := JoinAuthoriser(v, version, testServer, tc.room, tc.user, v.LookupIn(cur))
			if err != nil {
				var me *mxerr.Error
				if !errors.As(err, &me) {
					t.Fatalf("error %v is not a Matrix error", err)
				}
				got = me.Code
			}
			if got != tc.want {
				t.Fatalf("JoinAuthoriser(%s) = %q (%v), want %q", tc.user, got, err, tc.want)
			}
		})
	}
}
