package api

import (
	"encoding/json"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/engram-hs/engram/api/synccache"
	"github.com/engram-hs/engram/projections/rooms"
)

// syncFilter is the spec's Filter, as far as /sync applies it.
type syncFilter struct {
	AccountData *roomEventFilter `json:"account_data,omitempty"`
	Presence    *roomEventFilter `json:"presence,omitempty"`
	Room        struct {
		Rooms        []string         `json:"rooms,omitempty"`
		NotRooms     []string         `json:"not_rooms,omitempty"`
		IncludeLeave bool             `json:"include_leave,omitempty"`
		Timeline     *roomEventFilter `json:"timeline,omitempty"`
		State        *roomEventFilter `json:"state,omitempty"`
		Ephemeral    *roomEventFilter `json:"ephemeral,omitempty"`
		AccountData  *roomEventFilter `json:"account_data,omitempty"`
	} `json:"room"`
}

const maxSyncTimeout = 5 * time.Minute

func (s *Server) syncRoutes() {
	s.client("GET", "/sync", s.authed(s.sync))
	s.toDeviceRoutes()
	s.client("POST", "/knock/{roomIdOrAlias}", s.authed(s.knock))
}

func (s *Server) loadSyncFilter(userID, param string) (*syncFilter, error) {
	f := &syncFilter{}
	if param == "" {
		return f, nil
	}
	raw := json.RawMessage(param)
	if !strings.HasPrefix(strings.TrimSpace(param), "{") {
		stored, err := s.userdataView().Filter(userID, param)
		if err != nil {
			return nil, err
		}
		if stored == nil {
			return nil, errNotFound("Filter %s not found", param)
		}
		raw = stored
	}
	if err := json.Unmarshal(raw, f); err != nil {
		return nil, errInvalidParam("filter is not a valid Filter: %v", err)
	}
	return f, nil
}

func (s *Server) sync(w http.ResponseWriter, r *http.Request, sess *session) error {
	q := r.URL.Query()
	var since uint64
	if t := q.Get("since"); t != "" {
		var err error
		if since, err = s.parseSince(t); err != nil {
			return err
		}
	}
	timeout := time.Duration(0)
	if t := q.Get("timeout"); t != "" {
		ms, err := strconv.ParseInt(t, 10, 64)
		if err != nil || ms < 0 {
			return errInvalidParam("timeout must be a non-negative integer")
		}
		timeout = min(time.Duration(ms)*time.Millisecond, maxSyncTimeout)
	}
	fullState := q.Get("full_state") == "true"
	filter, err := s.loadSyncFilter(sess.UserID, q.Get("filter"))
	if err != nil {
		return err
	}
	// set_presence (spec): omitted means online; offline means "do not
	// mark me online". Syncing is activity, recorded at most once a
	// minute (recordSyncPresence).
	sp := q.Get("set_presence")
	switch sp {
	case "":
		sp = "online"
	case "online", "unavailable", "offline":
	default:
		return errInvalidParam("set_presence must be online, offline or unavailable")
	}
	if sp != "offline" {
		s.recordSyncPresence(r.Context(), sess.UserID, sp)
	}
	opts := syncOptions{useStateAfter: q.Get("use_state_after") == "true"}
	ackedToDevice := false
	ctx := r.Context()
	deadline := time.Now().Add(timeout)
	ms, err := s.memberships(sess.UserID)
	if err != nil {
		return err
	}
	var watched []string
	for _, m := range ms {
		if m.Membership == "join" {
			watched = append(watched, m.RoomID)
		}
	}
	for {
		// Register before reading the position, so a commit between the
		// two still wakes us. We watch our own streams and our joined
		// rooms; a membership change of ours wakes us too, and then the
		// build below tells the rooms to watch next.
		woken := s.notifier.register(sess.UserID, watched)
		pos := s.log.LastOffset()
		if since > pos {
			since = pos // a token from the future (e.g. after a restore) restarts from now
		}
		for _, h := range s.syncHandles() {
			if err := h.WaitApplied(ctx, pos); err != nil {
				s.notifier.unregister(woken)
				return err
			}
		}
		s.waitNotifications(ctx, pos)
		if !ackedToDevice {
			// Once per request: the since token acknowledges the to-device
			// messages it covers (those in (since, pos] are built below).
			ackedToDevice = true
			if err := s.ackToDevice(ctx, sess, since); err != nil {
				s.notifier.unregister(woken)
				return err
			}
		}
		release, err := s.syncCache.builds.acquire(ctx, syncBuildCost(filter, watched))
		if err != nil {
			s.notifier.unregister(woken)
			return err
		}
		// What was committed and folded while this build waited for its
		// slot goes into it too (woken is registered since before pos, so
		// nothing after the newer position is missed): one build carries
		// what would otherwise wake it again at once, and under load the
		// builds per message fall instead of queueing.
		pos = max(pos, s.syncAppliedPos())
		resp, empty, joined, err := s.buildSync(sess, filter, since, pos, fullState, opts, nowMS())
		if err != nil {
			release()
			s.notifier.unregister(woken)
			return err
		}
		remaining := time.Until(deadline)
		if !empty || since == 0 || fullState || remaining <= 0 {
			s.notifier.unregister(woken)
			raw, err := encodeSync(resp) // in the slot: encoding is part of the build's CPU
			release()
			if err != nil {
				return err
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(raw)
			return nil
		}
		release()
		if !slices.Equal(joined, watched) {
			// Rooms joined or left up to pos: watch the new set and build
			// again (a commit in a new room after pos would be missed).
			s.notifier.unregister(woken)
			watched = joined
			continue
		}
		t := time.NewTimer(remaining)
		select {
		case <-woken.ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			s.notifier.unregister(woken)
			return ctx.Err()
		case <-s.closed:
			t.Stop()
			s.notifier.unregister(woken)
			writeJSON(w, http.StatusOK, resp)
			return nil
		}
		t.Stop()
		s.notifier.unregister(woken)
	}
}

// joinedRoomIDs lists the rooms the user is joined to, in room ID order
// (as buildSync reports them).
func (s *Server) joinedRoomIDs(userID string) ([]string, error) {
	ms, err := s.roomsView().Memberships(userID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.Membership == "join" {
			out = append(out, m.RoomID)
		}
	}
	return out, nil
}

// syncOptions are the /sync query parameters that shape the response
// beyond the filter.
type syncOptions struct {
	useStateAfter bool // use_state_after: state_after instead of state
	// uncached builds from the projections alone, without the sync cache:
	// the reference the cached build is tested against.
	uncached bool
	// ignored: the user's m.ignored_user_list, read once per build.
	ignored map[string]bool
}

// syncAppliedPos is the newest log position every projection a build
// reads has folded (as if WaitApplied had returned for it), for a build
// to take without waiting.
func (s *Server) syncAppliedPos() uint64 {
	pos := s.notificationsH.Applied()
	for _, h := range s.syncHandles() {
		pos = min(pos, h.Applied())
	}
	return pos
}

// syncBuildSlots is how many /sync builds (and encodings) may run at
// once: half the cores (at least one), however many long-polls wake, so
// that the writes (sends, the projections' folds) keep the other half;
// with one build per core, a thousand woken syncers took 87% of the CPU
// and sends fell to 15% of their rate. A build is a short burst of reads;
// waiting for a slot costs a long-poll little, a starved send costs its
// sender the whole wait. syncSlots says which waiting build goes next.
func syncBuildSlots() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// syncBuildCost is what a build waiting for a slot (syncSlots) is
// expected to cost: the joined rooms its filter covers, the rooms a build
// under load finds changed.
func syncBuildCost(f *syncFilter, joined []string) int {
	rf := &roomEventFilter{Rooms: f.Room.Rooms, NotRooms: f.Room.NotRooms}
	n := 0
	for _, room := range joined {
		if rf.allowsRoom(room) {
			n++
		}
	}
	return n
}

// syncCache is what /sync keeps in memory between builds (api/synccache):
// the change clock, the members' memberships and the per-room parts of a
// build every member shares. builds bounds the builds running at once.
type syncCache struct {
	clock   *synccache.Clock
	members *synccache.Members
	parts   *synccache.Parts
	events  *synccache.Events
	related *synccache.Events // event ID -> whether anything relates to it (relations.View.HasChildren)
	builds  *syncSlots
}

// newSyncCache attaches the cache to the projections it copies; call it
// before the engine starts. The budget (Config.SyncCacheBytes) is split
// by what the builds of an initial sync burst kept (1,000 users and
// rooms, bench/README.md): 5/8 for the rooms' shared parts (their state,
// members and visibility), a quarter for the timelines' formatted events,
// 1/16 for whether anything relates to an event (a cheap read when
// missed), 1/16 for the users' memberships (one read per build).
func (s *Server) newSyncCache() {
	budget := int(s.cfg.SyncCacheBytes)
	if budget <= 0 {
		budget = DefaultSyncCacheBytes
	}
	c := &syncCache{
		clock:   synccache.NewClock(),
		members: synccache.NewMembers(budget / 16),
		parts:   synccache.NewParts(budget * 5 / 8),
		events:  synccache.NewEvents(budget / 4),
		related: synccache.NewEvents(budget / 16),
		builds:  newSyncSlots(syncBuildSlots()),
	}
	c.clock.Attach(s.roomsH.Name(), s.roomsH.Applied())
	c.clock.Attach(s.userdataH.Name(), s.userdataH.Applied())
	c.clock.OnReset(c.members.Reset)
	c.clock.OnReset(c.parts.Reset)
	c.clock.OnReset(c.events.Reset)
	c.clock.OnReset(c.related.Reset)
	s.syncCache = c
}

// syncCacheCollector exports each sync cache's bytes (as its entries are
// sized) and how many entries it had to compute: whether its share of the
// budget holds what the syncs read.
type syncCacheCollector struct {
	c               *syncCache
	bytes, computed *prometheus.Desc
}

func newSyncCacheCollector(c *syncCache) *syncCacheCollector {
	return &syncCacheCollector{c: c,
		bytes:    prometheus.NewDesc("engram_sync_cache_bytes", "Bytes the /sync caches keep, as their entries are sized (the budget is Config.SyncCacheBytes: 3/16 of memory_target).", []string{"cache"}, nil),
		computed: prometheus.NewDesc("engram_sync_cache_computed_total", "Entries the /sync caches computed (not found, or out of date).", []string{"cache"}, nil),
	}
}

func (sc *syncCacheCollector) Describe(ch chan<- *prometheus.Desc) { ch <- sc.bytes; ch <- sc.computed }

func (sc *syncCacheCollector) Collect(ch chan<- prometheus.Metric) {
	for _, c := range []struct {
		name  string
		stats func() (int, uint64)
	}{{"members", sc.c.members.Stats}, {"parts", sc.c.parts.Stats}, {"events", sc.c.events.Stats}, {"related", sc.c.related.Stats}} {
		n, computed := c.stats()
		ch <- prometheus.MustNewConstMetric(sc.bytes, prometheus.GaugeValue, float64(n), c.name)
		ch <- prometheus.MustNewConstMetric(sc.computed, prometheus.CounterValue, float64(computed), c.name)
	}
}

// memberships are the user's memberships (rooms.View.Memberships), from
// the cache.
func (s *Server) memberships(userID string) ([]rooms.Membership, error) {
	return s.syncCache.members.Get(userID, func() ([]rooms.Membership, error) { return s.roomsView().Memberships(userID) })
}
