package e2ee_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/e2ee"
	"github.com/rs/zerolog"
)

// TestRemoteDeviceListCopy: the copy of a remote user's device list
// follows updates whose prev_id it holds, ignores ones it applied
// already, turns stale on a gap (and stays stale through updates that
// follow the gap), and a resync replaces it; keys claiming another user
// or device are not believed; each step marks the user changed.
func TestRemoteDeviceListCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	h := eng.Register(e2ee.New(nil))
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	const u = "@r:remote"
	keys := func(user, dev string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"user_id":%q,"device_id":%q,"algorithms":[],"keys":{},"signatures":{}}`, user, dev))
	}
	last := uint64(0)
	appendAll := func(props ...englog.Proposal) {
		t.Helper()
		offs, err := node.Append(ctx, props...)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
		last = offs[len(offs)-1]
	}
	edu := func(stream uint64, prev []uint64, dev string, deleted bool, k json.RawMessage) englog.Proposal {
		c := map[string]any{"user_id": u, "device_id": dev, "stream_id": stream, "prev_id": prev, "deleted": deleted}
		if k != nil {
			c["keys"] = k
		}
		raw, _ := json.Marshal(c)
		return facts.MustEncode(englog.KindEDU, facts.EDU{Type: e2ee.EDUDeviceListUpdate, Origin: "remote", Content: raw})
	}
	v := e2ee.NewView(h.Reader())
	copyOf := func() *e2ee.RemoteList {
		t.Helper()
		l, err := v.RemoteList(u)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	devicesOf := func(l *e2ee.RemoteList) string {
		r, err := l.RenderRemote(nil)
		if err != nil {
			t.Fatal(err)
		}
		out := ""
		for _, d := range []string{"A", "B", "C", "D", "X"} {
			if r[d] != nil {
				out += d
			}
		}
		return out
	}
	changed := func() bool {
		at, err := v.ChangedAt(u)
		return err == nil && at == last
	}

	// No copy: an update only marks the user changed.
	appendAll(edu(3, []uint64{2}, "A", false, keys(u, "A")))
	if copyOf() != nil || !changed() {
		t.Fatalf("an update without a copy made one (%+v) or was not a change", copyOf())
	}
	// A resync makes the copy; a device whose keys name another device
	// is listed without keys.
	appendAll(facts.MustEncode(englog.KindRemoteDevicesResynced, facts.RemoteDevicesResynced{UserID: u, Origin: "remote", StreamID: 3,
		Devices: []facts.RemoteDevice{{DeviceID: "A", Keys: keys(u, "A")}, {DeviceID: "X", Keys: keys(u, "Y")}}}))
	if l := copyOf(); l == nil || l.Stale || l.StreamID != 3 || devicesOf(l) != "A" || l.ResyncedAt != last || !changed() {
		t.Fatalf("after the resync: %+v (%s)", l, devicesOf(l))
	}
	// Updates that follow; one already applied; one deleting.
	appendAll(edu(4, []uint64{3}, "B", false, keys(u, "B")), edu(4, []uint64{3}, "C", false, keys(u, "C")),
		edu(5, []uint64{4}, "C", false, keys(u, "C")), edu(6, []uint64{5}, "A", true, nil))
	if l := copyOf(); l.Stale || l.StreamID != 6 || devicesOf(l) != "BC" {
		t.Fatalf("after following updates: %+v (%s)", l, devicesOf(l))
	}
	// A gap: the copy is stale, and an update after it cannot mend it.
	appendAll(edu(9, []uint64{8}, "D", false, keys(u, "D")), edu(10, []uint64{9}, "A", false, keys(u, "A")))
	if l := copyOf(); !l.Stale {
		t.Fatalf("after a gap the copy is not stale: %+v", l)
	}
	// A resync mends it; an update with no prev_id (a "first" one) is a gap.
	appendAll(facts.MustEncode(englog.KindRemoteDevicesResynced, facts.RemoteDevicesResynced{UserID: u, Origin: "remote", StreamID: 10,
		Devices: []facts.RemoteDevice{{DeviceID: "D", Keys: keys(u, "D")}, {DeviceID: "A", Keys: keys(u, "A"), DisplayName: "phone"}}}))
	l := copyOf()
	if l.Stale || devicesOf(l) != "AD" {
		t.Fatalf("after the second resync: %+v (%s)", l, devicesOf(l))
	}
	r, _ := l.RenderRemote([]string{"A"})
	var a struct {
		Unsigned struct {
			Name string `json:"device_display_name"`
		} `json:"unsigned"`
	}
	if len(r) != 1 || json.Unmarshal(r["A"], &a) != nil || a.Unsigned.Name != "phone" {
		t.Fatalf("rendering device A: %s", r)
	}
	appendAll(edu(11, nil, "B", false, keys(u, "B")))
	if l := copyOf(); !l.Stale {
		t.Fatalf("an update with no prev_id over a copy did not make it stale: %+v", l)
	}

	// Resyncs that differ only by a device without keys (not shown to
	// local users) are no news; one that renames a shown device is.
	resync := func(stream uint64, devs ...facts.RemoteDevice) englog.Proposal {
		return facts.MustEncode(englog.KindRemoteDevicesResynced, facts.RemoteDevicesResynced{UserID: u, Origin: "remote", StreamID: stream, Devices: devs})
	}
	appendAll(resync(20, facts.RemoteDevice{DeviceID: "A", Keys: keys(u, "A")}, facts.RemoteDevice{DeviceID: "K", DisplayName: "no keys"}))
	if l := copyOf(); l.Stale || !changed() {
		t.Fatalf("the resync of a stale copy: %+v, changed: %v", l, changed())
	}
	appendAll(resync(21, facts.RemoteDevice{DeviceID: "A", Keys: keys(u, "A")}))
	if changed() {
		t.Fatal("a resync that dropped only a device without keys marked the user changed")
	}
	appendAll(resync(22, facts.RemoteDevice{DeviceID: "A", Keys: keys(u, "A"), DisplayName: "laptop"}))
	if !changed() {
		t.Fatal("a resync that renamed a device did not mark the user changed")
	}

	// A copy fetched at stream 0 (before the user's server sent any
	// update), then that server's first update (no prev_id) announcing a
	// device as the copy holds it, its fetch having failed: the copy is
	// stale, but nothing changed for local users. A first update naming
	// a device the copy lacks is news.
	for _, tc := range []struct {
		user, dev string
		news      bool
	}{{"@s:remote", "A", false}, {"@n:remote", "NEW", true}} {
		appendAll(facts.MustEncode(englog.KindRemoteDevicesResynced, facts.RemoteDevicesResynced{UserID: tc.user, Origin: "remote", StreamID: 0,
			Devices: []facts.RemoteDevice{{DeviceID: "A", Keys: keys(tc.user, "A")}}}))
		raw, _ := json.Marshal(map[string]any{"user_id": tc.user, "device_id": tc.dev, "stream_id": 1, "keys": keys(tc.user, tc.dev)})
		appendAll(facts.MustEncode(englog.KindEDU, facts.EDU{Type: e2ee.EDUDeviceListUpdate, Origin: "remote", Content: raw}))
		l, err := v.RemoteList(tc.user)
		if err != nil || l == nil || !l.Stale {
			t.Fatalf("%s: a first update over a stream-0 copy left it %+v (%v)", tc.user, l, err)
		}
		if at, err := v.ChangedAt(tc.user); err != nil || (at == last) != tc.news {
			t.Fatalf("%s: the first update's news = %v, want %v (%v)", tc.user, at == last, tc.news, err)
		}
	}
}

func TestDeviceListUpdateFollows(t *testing.T) {
	for _, c := range []struct {
		stream uint64
		prev   []uint64
		held   uint64
		want   bool
	}{
		{5, []uint64{4}, 4, true},
		{5, []uint64{3, 4}, 4, true},
		{5, []uint64{4}, 3, false},
		{5, nil, 4, false},
		{4, nil, 4, true}, // applied already
		{5, []uint64{2}, 4, true},
	} {
		if got := (e2ee.DeviceListUpdate{StreamID: c.stream, PrevID: c.prev}).Follows(c.held); got != c.want {
			t.Errorf("stream %d prev %v over %d: Follows = %v, want %v", c.stream, c.prev, c.held, got, c.want)
		}
	}
}
