package roomwrite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/stateres"
	"github.com/rs/zerolog"
)

// member is one node of a three-node Raft cluster on loopback, with its
// own projection engine, rooms Writer and accounts projection.
type member struct {
	id   string
	node *englog.Node
	eng  *projections.Engine
	w    *Writer
	accH *projections.Handle
}

func startCluster(t *testing.T) []*member {
	t.Helper()
	var peers []englog.Peer
	for i := 1; i <= 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, englog.Peer{ID: fmt.Sprintf("n%d", i), Addr: l.Addr().String()})
		l.Close()
	}
	var ms []*member
	for _, p := range peers {
		node, err := englog.Open(englog.Config{Dir: t.TempDir(), NodeID: p.ID, RaftAddr: p.Addr, Peers: peers, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatalf("open %s: %v", p.ID, err)
		}
		eng := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
		w, err := New(Config{ServerName: testServer}, node, eng)
		if err != nil {
			t.Fatal(err)
		}
		m := &member{id: p.ID, node: node, eng: eng, w: w, accH: eng.Register(accounts.New())}
		if err := eng.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			_ = m.eng.Close()
			_ = m.node.Close()
		}
	})
	return ms
}

func clusterLeader(t *testing.T, ms []*member) (*member, []*member) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for i, m := range ms {
			if m.node.IsLeader() {
				var followers []*member
				followers = append(append(followers, ms[:i]...), ms[i+1:]...)
				return m, followers
			}
		}
	}
	t.Fatal("no leader elected within 20s")
	return nil, nil
}

// caughtUp waits until every member's projections applied the leader's
// last offset and checks that they folded the same bytes.
func caughtUp(t *testing.T, ms []*member, last uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := map[string][]byte{}
	for _, m := range ms {
		for _, h := range []*projections.Handle{m.w.Handle(), m.accH} {
			if err := h.WaitApplied(ctx, last); err != nil {
				t.Fatalf("%s: %s never applied offset %d: %v", m.id, h.Name(), last, err)
			}
			d, err := m.eng.Digest(h.Name())
			if err != nil || len(d) == 0 {
				t.Fatalf("%s: digest of %s: %x %v", m.id, h.Name(), d, err)
			}
			if want[h.Name()] == nil {
				want[h.Name()] = d
			} else if !bytes.Equal(want[h.Name()], d) {
				t.Fatalf("%s folded %s into %x, another node into %x", m.id, h.Name(), d, want[h.Name()])
			}
		}
	}
}

// The invariants hold in a cluster, decided by the fold in log order.
//
// What this proves, and how: each node makes its decision on its own
// view (every view sees the alias free and the token with one use left),
// and the resulting proposals are appended concurrently through the
// leader, as forwarded proposals built on stale views would be. The same
// races through real forwarding, over the client API of three `engram
// serve` nodes, are cmd/engram's TestClusterRacesThroughForwarding. Exactly one alias
// claim and one token use win, every node folds the same result, and the
// verdict each claimer reads back (as api's putAlias and
// commitRegistration do) names the same single winner. Room events are
// built on the leader only: a follower's Writer refuses to build (503),
// and concurrent sends on the leader form one chain.
func TestClusterInvariantsUnderRaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	ms := startCluster(t)
	leader, followers := clusterLeader(t, ms)
	ctx := context.Background()
	alice := user("alice")
	lr := &rig{w: leader.w, node: leader.node}
	room := lr.createRoom(t, alice, "12")
	// Each claimer wants the alias for a room of its own.
	claimRooms := []string{lr.createRoom(t, alice, "12"), lr.createRoom(t, alice, "11"), lr.createRoom(t, alice, "10")}
	one := 1
	offs, err := leader.node.Append(ctx, facts.MustEncode(englog.KindRegistrationToken, facts.RegistrationToken{Op: facts.RegistrationTokenCreate, Token: "last-one", UsesAllowed: &one}))
	if err != nil {
		t.Fatal(err)
	}
	caughtUp(t, ms, offs[0])

	// Followers cannot append: their proposals reach the log only through
	// the leader.
	if _, err := followers[0].node.Append(ctx, facts.MustEncode(englog.KindAliasSet, facts.AliasSet{Alias: "#x:" + testServer, RoomID: room})); !errors.Is(err, englog.ErrNotLeader) {
		t.Fatalf("a follower's append: %v, want ErrNotLeader", err)
	}

	// Each node decides on its own view.
	const alias = "#race:" + testServer
	var props []englog.Proposal
	type claim struct{ user, reg, room string }
	var claims []claim
	for i, m := range ms {
		if a, err := m.w.View().Alias(alias); err != nil || a != nil {
			t.Fatalf("%s sees alias %v (%v) before the race", m.id, a, err)
		}
		tok, err := accounts.NewView(m.accH.Reader()).RegistrationToken("last-one")
		if err != nil || tok == nil || tok.Completed != 0 {
			t.Fatalf("%s sees token %+v (%v) before the race", m.id, tok, err)
		}
		c := claim{user: user(fmt.Sprintf("claimer%d", i)), reg: fmt.Sprintf("reg%d", i), room: claimRooms[i]}
		claims = append(claims, c)
		props = append(props,
			facts.MustEncode(englog.KindAliasSet, facts.AliasSet{Alias: alias, RoomID: c.room, Creator: c.user}),
			facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: c.user, Registration: c.reg, RegistrationToken: "last-one"}))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	claimAt := make([]uint64, len(ms)) // offset of each claim's entries
	for i := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var o []uint64
			o, errs[i] = leader.node.Append(ctx, props[2*i:2*i+2]...)
			if len(o) > 0 {
				claimAt[i] = o[0]
			}
		}()
	}

	// Meanwhile, sends into the room on every node: followers refuse
	// before building, the leader's sends form one chain.
	const sends = 12
	sendErrs := make([]error, sends)
	for i := range sends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, sendErrs[i] = leader.w.Send(ctx, stateres.ProtoEvent{Type: "m.room.message", Sender: alice, RoomID: room,
				Content: mustJSON(map[string]any{"body": fmt.Sprint(i)})}, nil)
		}()
	}
	for _, f := range followers {
		before := f.node.LastOffset()
		_, err := f.w.Send(ctx, stateres.ProtoEvent{Type: "m.room.message", Sender: alice, RoomID: room, Content: mustJSON(map[string]any{"body": "follower"})}, nil)
		var me *mxerr.Error
		if !errors.As(err, &me) || me.Status != http.StatusServiceUnavailable {
			t.Errorf("%s (follower) built a send: %v, want 503", f.id, err)
		}
		if _, err := f.w.Extend(room); !errors.As(err, &me) || me.Status != http.StatusServiceUnavailable {
			t.Errorf("%s (follower) started a builder: %v, want 503", f.id, err)
		}
		_ = before
	}
	wg.Wait()
	for i, err := range append(errs, sendErrs...) {
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	caughtUp(t, ms, leader.node.LastOffset())
	first := 0 // the claim first in log order wins both races
	for i := range claims {
		if claimAt[i] < claimAt[first] {
			first = i
		}
	}

	for _, m := range ms {
		// One alias owner, the same on every node; exactly one claimer's
		// read-back names them.
		a, err := m.w.View().Alias(alias)
		if err != nil || a == nil {
			t.Fatalf("%s: alias %v %v", m.id, a, err)
		}
		winners := 0
		for _, c := range claims {
			if a.RoomID == c.room && a.Creator == c.user {
				winners++
			}
		}
		if winners != 1 || a.Creator != claims[first].user {
			t.Fatalf("%s: %d alias claims won, owner %+v; want only the first in log order (%s)", m.id, winners, a, claims[first].user)
		}
		for _, c := range claims {
			aliases, err := m.w.View().Aliases(c.room)
			if err != nil {
				t.Fatal(err)
			}
			if want := c.room == claims[first].room; (len(aliases) == 1) != want || len(aliases) > 1 {
				t.Fatalf("%s: room %s lists aliases %v; only the winner's room may list %s", m.id, c.room, aliases, alias)
			}
		}
		// One registration got the token's last use; the others were
		// refused (api answers them 401 M_FORBIDDEN).
		av := accounts.NewView(m.accH.Reader())
		registered := 0
		for _, c := range claims {
			acc, err := av.Account(c.user)
			if err != nil {
				t.Fatal(err)
			}
			if acc != nil && acc.Registration == c.reg {
				registered++
				if c.user != claims[first].user {
					t.Fatalf("%s: %s got the token's last use, but %s came first in the log", m.id, c.user, claims[first].user)
				}
			}
		}
		tok, err := av.RegistrationToken("last-one")
		if err != nil || tok == nil {
			t.Fatal(tok, err)
		}
		if registered != 1 || tok.Completed != 1 {
			t.Fatalf("%s: %d registrations used the token, which counts %d uses; want 1 and 1", m.id, registered, tok.Completed)
		}
		// The room's events form a single chain: one forward extremity,
		// and each timeline event's only prev event is the one before.
		r, err := m.w.View().Room(room)
		if err != nil || r == nil || len(r.Extremities) != 1 {
			t.Fatalf("%s: room extremities %v (%v), want one", m.id, r, err)
		}
		tl, err := m.w.View().Timeline(room, 0, true, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(tl) != 4+sends {
			t.Fatalf("%s: %d timeline events, want %d", m.id, len(tl), 4+sends)
		}
		for i := 1; i < len(tl); i++ {
			e, err := m.w.View().Event(tl[i].EventID)
			if err != nil || e == nil {
				t.Fatal(e, err)
			}
			p, err := e.PDU()
			if err != nil {
				t.Fatal(err)
			}
			if prev := p.PrevEventIDs(); len(prev) != 1 || prev[0] != tl[i-1].EventID {
				t.Fatalf("%s: event %d (%s) has prev events %v, want only %s", m.id, i, tl[i].EventID, prev, tl[i-1].EventID)
			}
		}
	}
}
