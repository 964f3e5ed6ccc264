package api

// Building a /sync response: which rooms and streams changed in (since,
// pos], and each section. The request side (parameters, filters, the
// long-poll) is in sync.go.

import (
	"cmp"
	"encoding/json"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/engram-hs/engram/api/keys"
	"github.com/engram-hs/engram/api/synccache"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/projections/userdata"
	"github.com/engram-hs/engram/stateres"
)

// buildSync computes the sync response for (since, pos] as of now (ms).
// empty reports that nothing changed for this user; joined lists the
// joined rooms the filter allows.
func (s *Server) buildSync(sess *session, f *syncFilter, since, pos uint64, fullState bool, opts syncOptions, now int64) (resp map[string]any, empty bool, joinedRooms []string, err error) {
	rv := s.roomsView()
	uv := s.userdataView()
	empty = true
	join, invite, leave, knock := map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}
	var ms []rooms.Membership
	if opts.uncached {
		ms, err = rv.Memberships(sess.UserID)
	} else {
		ms, err = s.memberships(sess.UserID)
	}
	if err != nil {
		return nil, false, nil, err
	}
	if opts.ignored, err = s.ignoredUsers(sess.UserID); err != nil {
		return nil, false, nil, err
	}
	incremental := since != 0 && !fullState
	// Which joined rooms may have changed after since, and the offset of
	// the user's last account data change (below it, no account data needs
	// reading): from the change clock when it has seen every change after
	// since, without a read; else from offsets stored per room and user.
	var (
		clocked      bool
		adChangedAt  uint64
		changedRooms map[string]bool // joined rooms changed after since (incremental, clocked)
		listsHint    *keys.ListsHint // for the device lists (since != 0, clocked)
	)
	if !opts.uncached {
		s.syncCache.clock.Read(func(v synccache.View) {
			if clocked = v.Covers(since); !clocked {
				return
			}
			adChangedAt = v.AccountDataChangedAt(sess.UserID)
			if since != 0 {
				membersChanged := map[string]bool{}
				for _, m := range ms {
					if m.Membership == "join" && m.Offset <= since && v.MembersChangedAt(m.RoomID) > since {
						membersChanged[m.RoomID] = true
					}
				}
				listsHint = &keys.ListsHint{Memberships: ms, MembersChanged: func(room string) bool { return membersChanged[room] }}
			}
			if !incremental {
				return
			}
			changedRooms = map[string]bool{}
			for _, m := range ms {
				if m.Membership == "join" && m.Offset <= since && (v.RoomChangedAt(m.RoomID) > since || v.RoomDataChangedAt(sess.UserID, m.RoomID) > since) {
					changedRooms[m.RoomID] = true
				}
			}
		})
	}
	if !clocked {
		if adChangedAt, err = uv.AccountDataChangedAt(sess.UserID); err != nil {
			return nil, false, nil, err
		}
	}
	roomFilter := &roomEventFilter{Rooms: f.Room.Rooms, NotRooms: f.Room.NotRooms}
	for _, m := range ms {
		if !roomFilter.allowsRoom(m.RoomID) || m.Offset > pos {
			continue
		}
		if m.Membership == "leave" || m.Membership == "ban" {
			show := since != 0 && m.Offset > since
			if !show && (since == 0 || fullState) {
				if show = f.Room.IncludeLeave; !show {
					if show, err = s.removedByOther(rv, sess.UserID, m); err != nil {
						return nil, false, nil, err
					}
				}
			}
			if !show {
				continue // the client knows it left, and did not ask for left rooms
			}
			// Only a left room can be forgotten (joining, knocking or an
			// invite clears it), so joined rooms skip the read. A leave
			// after since is still sent once, forgotten or not: the
			// client's other devices learn of it that way (as Synapse
			// does; the spec's wording would hide it).
			if since == 0 || m.Offset <= since {
				if forgotten, err := rv.Forgotten(sess.UserID, m.RoomID); err != nil {
					return nil, false, nil, err
				} else if forgotten {
					continue
				}
			}
		}
		switch m.Membership {
		case "join":
			joinedRooms = append(joinedRooms, m.RoomID)
			// A room joined after since is new to the client: send it whole.
			roomSince := since
			if m.Offset > since {
				roomSince = 0
			}
			keep := fullState || since == 0
			if !keep && roomSince != 0 {
				// Skip a room nothing happened in since the token before
				// reading anything else of it: the common case of a user
				// in many rooms woken by one of them.
				if changedRooms != nil {
					if !changedRooms[m.RoomID] {
						continue
					}
				} else if changed, err := s.roomChangedSince(rv, uv, m.RoomID, since, adChangedAt); err != nil {
					return nil, false, nil, err
				} else if !changed {
					continue
				}
			}
			jr, changed, err := s.syncJoinedRoom(sess, rv, f, m.RoomID, roomSince, since, pos, pos, fullState, now, opts, keep)
			if err != nil {
				return nil, false, nil, err
			}
			if changed || keep {
				join[m.RoomID] = jr
				empty = empty && !changed
			}
		case "invite":
			if ignored, err := s.invitedByIgnored(rv, m, opts.ignored); err != nil {
				return nil, false, nil, err
			} else if ignored {
				continue // spec: invites from ignored users are not sent
			}
			if m.Offset > since || since == 0 {
				ir, err := s.strippedState(rv, m)
				if err != nil {
					return nil, false, nil, err
				}
				invite[m.RoomID] = map[string]any{"invite_state": ir}
				empty = false
			}
		case "knock":
			if m.Offset > since || since == 0 {
				kr, err := s.strippedState(rv, m)
				if err != nil {
					return nil, false, nil, err
				}
				knock[m.RoomID] = map[string]any{"knock_state": kr}
				empty = false
			}
		case "leave", "ban":
			// Left after since, or asked for (include_leave): the timeline
			// up to the leave.
			lr, _, err := s.syncJoinedRoom(sess, rv, f, m.RoomID, since, since, m.Offset, pos, fullState, now, opts, true)
			if err != nil {
				return nil, false, nil, err
			}
			if since == 0 || m.Offset > since {
				// A leave of a room this server does not hold (an invite
				// rejected through the inviter's server, or rescinded
				// there) is in no timeline here: it is the left room's
				// timeline, so the client sees the room left.
				if e, err := rv.Event(m.EventID); err != nil {
					return nil, false, nil, err
				} else if e != nil && e.Outlier {
					if tl, ok := lr["timeline"].(map[string]any); ok {
						evs, _ := tl["events"].([]any)
						tl["events"] = append(evs, s.clientEvent(rv, e, sess, false))
					}
				}
			}
			delete(lr, "ephemeral")
			delete(lr, "unread_notifications")
			delete(lr, "unread_thread_notifications")
			delete(lr, "summary")
			leave[m.RoomID] = lr
			empty = false
		}
	}
	var global []userdata.Record
	if adChangedAt > since {
		global, err = uv.AccountDataOf(sess.UserID, "", since)
	}
	if err != nil {
		return nil, false, nil, err
	}
	ad := []map[string]any{}
	pushRulesSent := false
	for _, rec := range global {
		if rec.Offset <= pos && f.AccountData.allows(rec.Type, sess.UserID, nil) {
			content := rec.Content
			if rec.Type == "m.push_rules" {
				// Served with this build's defaults merged in, as GET
				// /pushrules/ shows them.
				if content, err = s.PushRulesContent(sess.UserID); err != nil {
					return nil, false, nil, err
				}
				pushRulesSent = true
			}
			ad = append(ad, map[string]any{"type": rec.Type, "content": content})
		}
	}
	// An initial sync carries the push rules even for a user who never
	// changed them (spec: m.push_rules in account data; clients need them
	// to compute notifications).
	if since == 0 && !pushRulesSent && f.AccountData.allows("m.push_rules", sess.UserID, nil) {
		content, err := s.PushRulesContent(sess.UserID)
		if err != nil {
			return nil, false, nil, err
		}
		ad = append(ad, map[string]any{"type": "m.push_rules", "content": content})
	}
	var membersChanged func(string) bool
	if listsHint != nil {
		membersChanged = listsHint.MembersChanged
	}
	presence, err := s.presenceSection(sess, f, rv, ms, joinedRooms, membersChanged, since, pos, now, opts.uncached)
	if err != nil {
		return nil, false, nil, err
	}
	toDevice, err := s.toDeviceSection(sess, since, pos)
	if err != nil {
		return nil, false, nil, err
	}
	e2ee, listsChanged, err := s.e2eeSyncSection(sess, since, pos, listsHint)
	if err != nil {
		return nil, false, nil, err
	}
	if len(ad) > 0 || len(presence) > 0 || len(toDevice) > 0 || listsChanged {
		empty = false
	}
	next, err := s.tokenAt("s", pos)
	if err != nil {
		return nil, false, nil, err
	}
	resp = map[string]any{
		"next_batch":   next,
		"rooms":        map[string]any{"join": join, "invite": invite, "leave": leave, "knock": knock},
		"account_data": map[string]any{"events": ad},
		"presence":     map[string]any{"events": presence},
		"to_device":    map[string]any{"events": toDevice},
	}
	maps.Copy(resp, e2ee) // device_lists, device_one_time_keys_count, device_unused_fallback_key_types
	return resp, empty, joinedRooms, nil
}

// removedByOther reports whether a leave or ban membership was someone
// else's doing (a kick or a ban): a full sync shows such rooms even
// without include_leave, as Synapse does, so a client that missed the
// moment still learns why the room went away.
func (s *Server) removedByOther(rv rooms.View, userID string, m rooms.Membership) (bool, error) {
	if m.Membership == "ban" {
		return true, nil
	}
	e, err := rv.Event(m.EventID)
	if err != nil {
		return false, err
	}
	return e != nil && headOf(e).Sender != userID, nil
}

// roomChangedSince reports whether anything of a joined room a sync
// shows may have changed after since: its timeline (and so its state),
// its typing or receipts, or the user's account data (adChangedAt, any
// room). Three offsets, no event read.
func (s *Server) roomChangedSince(rv rooms.View, uv userdata.View, roomID string, since, adChangedAt uint64) (bool, error) {
	if adChangedAt > since {
		return true, nil
	}
	if at, err := rv.ChangedAt(roomID); err != nil || at > since {
		return true, err
	}
	at, err := uv.EphemeralChangedAt(roomID)
	return at > since, err
}

// syncJoinedRoom builds one room's section with the timeline in
// (roomSince, upper], state at the timeline's start, ephemeral events and
// room account data changed since since. changed reports that anything
// is new; when nothing is and keepUnchanged is false, the section is nil
// (the caller leaves the room out).
func (s *Server) syncJoinedRoom(sess *session, v rooms.View, f *syncFilter, roomID string, roomSince, since, upper, pos uint64, fullState bool, now int64, opts syncOptions, keepUnchanged bool) (map[string]any, bool, error) {
	tf := f.Room.Timeline
	limit := 10
	if tf != nil && tf.Limit != nil {
		limit = max(*tf.Limit, 0)
	}
	vis, err := s.syncVisibility(v, roomID, sess.UserID, opts.uncached)
	if vis != nil {
		vis.ignored = opts.ignored
	}
	if err != nil {
		return nil, false, err
	}
	// One more than the limit tells whether the timeline was cut.
	evs, err := s.syncTimeline(v, roomID, upper, limit+1, roomSince, tf, vis, opts.uncached)
	if err != nil {
		return nil, false, err
	}
	// A room new to the client gets its latest events by depth, as
	// Synapse picks them: where the DAG forked, an event that arrived last
	// may sit lower in it than those before it.
	var skipped []*rooms.Event
	if roomSince == 0 && limit > 0 && !depthOrdered(evs) {
		if evs, skipped, err = s.latestByDepth(v, roomID, upper, limit, tf, vis); err != nil {
			return nil, false, err
		}
	}
	limited := len(evs) > limit
	if limited {
		evs = evs[:limit]
	}
	// A room joined after since is new to the client: its timeline is
	// limited (there is history before it to page back to), as Synapse
	// marks it, whatever the filter let through.
	if roomSince == 0 && since != 0 {
		limited = true
	}
	// A gap in the room's history here (an event received over federation
	// whose prev_events this server lacks) cuts the timeline: the client
	// gets the events after the gap with limited set, and pages back
	// across it with prev_batch (which backfills).
	if cut, err := s.timelineGap(v, evs); err != nil {
		return nil, false, err
	} else if cut < len(evs) {
		evs, limited = evs[:cut], true
	}
	slices.Reverse(evs)
	timelineStart := upper + 1
	for _, e := range evs { // the first, unless latestByDepth ordered them
		timelineStart = min(timelineStart, e.Offset)
	}
	prevPos := timelineStart - 1
	if roomSince == 0 && !limited {
		// As Synapse gives it: a first timeline that holds all of the
		// room's history the client may see carries the sync's own position as prev_batch,
		// so /members?at= it reads the members as the client now has
		// them (not the empty room before its create event).
		prevPos = upper
	}
	prevBatch, err := s.tokenAt("t", prevPos)
	if err != nil {
		return nil, false, err
	}
	timeline := make([]any, 0, len(evs))
	senders := map[string]bool{sess.UserID: true}
	inTimeline := map[string]bool{}
	for _, e := range evs {
		timeline = append(timeline, s.syncClientEvent(v, e, sess, vis, opts.uncached))
		senders[headOf(e).Sender] = true
		inTimeline[e.EventID] = true
	}
	changed := len(evs) > 0

	sf := f.Room.State
	lazy := sf != nil && sf.LazyLoadMembers
	redundant := lazy && sf.IncludeRedundantMembers
	whole := roomSince == 0 || fullState
	if whole && lazy {
		s.lazy.forget(sess, roomID) // the client starts over
	}
	// The state section is the state at the start of the timeline (or,
	// with use_state_after, at its end) that the client lacks: all of it
	// on an initial or full-state sync, else what changed since since.
	// With lazy_load_members, member events only of the timeline's
	// senders, and (unless include_redundant_members) only those not sent
	// to this device already.
	stateAt := timelineStart
	if opts.useStateAfter {
		stateAt = upper + 1
	}
	state := []any{}
	// A limited incremental timeline sends the state events that changed
	// after since, before the timeline: none when the room's current
	// state has not changed since the token (the change clock says so
	// without a read), so the room's whole state is not read to find
	// nothing; O(what changed).
	stateQuiet := false
	if limited && !whole && !lazy && !opts.useStateAfter && !opts.uncached {
		s.syncCache.clock.Read(func(c synccache.View) { stateQuiet = c.Covers(since) && c.StateChangedAt(roomID) <= since })
	}
	if (whole || limited || lazy || opts.useStateAfter) && !stateQuiet {
		var at []stateEvent
		if whole || limited || opts.useStateAfter {
			at, err = s.stateBefore(v, roomID, stateAt, opts.uncached)
			if err == nil && len(skipped) > 0 && !opts.useStateAfter {
				at, err = s.withSkippedState(v, roomID, at, skipped, timelineStart, upper, opts.uncached)
			}
		} else {
			var evs []*rooms.Event
			evs, err = s.membersAt(v, roomID, slices.Sorted(maps.Keys(senders)), stateAt) // lazy only: the senders suffice
			at = readStates(evs)
		}
		if err != nil {
			return nil, false, err
		}
		roomAt, relCovered := s.eventsChangedAt(roomID)
		for _, e := range at {
			if !opts.useStateAfter && inTimeline[e.id] {
				continue
			}
			h := e.head
			member := h.Type == stateres.MRoomMember && h.StateKey != nil
			if lazy && member {
				if !senders[*h.StateKey] || inTimeline[e.id] && !opts.useStateAfter {
					continue
				}
				if !redundant && !whole && s.lazy.sent(sess, roomID, e.id) {
					continue
				}
			} else {
				changedHere := e.offset > since && (limited || opts.useStateAfter)
				if !whole && !changedHere {
					continue // the client has it, or the timeline carries it
				}
			}
			if !sf.allows(h.Type, h.Sender, h.Content) {
				continue
			}
			if lazy && member {
				s.lazy.remember(sess, roomID, e.id)
			}
			state = append(state, s.syncStateEvent(v, roomID, e, roomAt, relCovered, sess, vis, opts.uncached))
		}
	}

	// An incremental build sends the typing, receipts and room account
	// data that changed after since: when the change clock says none did,
	// nothing of them is read (three reads per room and build, 12% of the
	// builds' CPU with 300 syncers; bench/README.md, 2026-12-07, syncers2).
	ephemeralQuiet, dataQuiet := false, false
	if since != 0 && !opts.uncached {
		s.syncCache.clock.Read(func(c synccache.View) {
			if c.Covers(since) {
				ephemeralQuiet = c.EphemeralChangedAt(roomID) <= since
				dataQuiet = c.RoomDataChangedAt(sess.UserID, roomID) <= since
			}
		})
	}
	ephemeral := []map[string]any{}
	var receipts []userdata.Receipt
	if !ephemeralQuiet {
		typingUsers, typingStamp, err := s.userdataView().Typing(roomID, now)
		if err != nil {
			return nil, false, err
		}
		if (typingStamp > since && typingStamp <= pos) || (since == 0 && len(typingUsers) > 0) {
			ephemeral = append(ephemeral, map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": typingUsers}})
		}
		if receipts, err = s.userdataView().Receipts(roomID, since); err != nil {
			return nil, false, err
		}
	}
	rc := map[string]map[string]map[string]any{}
	for _, rr := range receipts {
		if rr.Offset > pos || (rr.ReceiptType == "m.read.private" && rr.UserID != sess.UserID) {
			continue
		}
		if rc[rr.EventID] == nil {
			rc[rr.EventID] = map[string]map[string]any{}
		}
		if rc[rr.EventID][rr.ReceiptType] == nil {
			rc[rr.EventID][rr.ReceiptType] = map[string]any{}
		}
		// One receipt per user, type and event: with both an unthreaded
		// and a threaded one there, the unthreaded one (MSC4102).
		if prev, ok := rc[rr.EventID][rr.ReceiptType][rr.UserID].(map[string]any); ok && prev["thread_id"] == nil {
			continue
		}
		info := map[string]any{"ts": rr.TS}
		if rr.ThreadID != "" {
			info["thread_id"] = rr.ThreadID
		}
		rc[rr.EventID][rr.ReceiptType][rr.UserID] = info
	}
	if len(rc) > 0 {
		ephemeral = append(ephemeral, map[string]any{"type": "m.receipt", "content": rc})
	}
	ad := []map[string]any{}
	var recs []userdata.Record
	if !dataQuiet {
		if recs, err = s.userdataView().AccountDataOf(sess.UserID, roomID, since); err != nil {
			return nil, false, err
		}
	}
	for _, rec := range recs {
		if rec.Offset <= pos {
			ad = append(ad, map[string]any{"type": rec.Type, "content": rec.Content})
		}
	}
	changed = changed || len(ephemeral) > 0 || len(ad) > 0 || (len(state) > 0 && roomSince == 0)
	if !changed && !keepUnchanged {
		// The caller drops an unchanged room from an incremental sync;
		// skip the summary and counts, which cost the most reads.
		return nil, false, nil
	}

	summary, err := s.roomSummary(v, roomID, sess.UserID, opts.uncached)
	if err != nil {
		return nil, false, err
	}
	out := map[string]any{
		"timeline":     map[string]any{"events": timeline, "limited": limited, "prev_batch": prevBatch},
		"ephemeral":    map[string]any{"events": ephemeral},
		"account_data": map[string]any{"events": ad},
		"summary":      summary,
	}
	if opts.useStateAfter {
		out["state_after"] = map[string]any{"events": state}
	} else {
		out["state"] = map[string]any{"events": state}
	}
	unread, threads, err := s.unreadCounts(sess.UserID, roomID, tf != nil && tf.UnreadThreadNotifications)
	if err != nil {
		return nil, false, err
	}
	out["unread_notifications"] = unread
	if threads != nil {
		out["unread_thread_notifications"] = threads
	}
	return out, changed, nil
}

// depthOrdered says whether evs (newest first) are also in descending
// depth: then the latest events by depth are the latest that arrived.
func depthOrdered(evs []*rooms.Event) bool {
	low := int64(math.MaxInt64)
	for _, e := range evs {
		p, err := e.PDU()
		if err != nil {
			return true // the caller's reads report it
		}
		if p.Depth() > low {
			return false
		}
		low = min(low, p.Depth())
	}
	return true
}

// depthWindow is how many of a room's latest events latestByDepth
// orders by depth, beyond the timeline's limit.
const depthWindow = 50

// latestByDepth reads the room's last limit+depthWindow+1 events the
// filter lets through (up to upper) and returns them ordered by depth,
// then arrival, newest first (more than limit: the timeline is limited),
// and the state events among them that arrived later than the oldest
// of the first limit but rank below them (the state section carries
// those: no timeline shows them).
func (s *Server) latestByDepth(v rooms.View, roomID string, upper uint64, limit int, tf *roomEventFilter, vis *visibility) ([]*rooms.Event, []*rooms.Event, error) {
	evs, _, _, err := s.page(v, roomID, upper, false, limit+depthWindow+1, 0, tf, vis)
	if err != nil {
		return nil, nil, err
	}
	depth := func(e *rooms.Event) int64 {
		p, _ := e.PDU() // depthOrdered read every one of them already
		if p == nil {
			return 0
		}
		return p.Depth()
	}
	slices.SortStableFunc(evs, func(a, b *rooms.Event) int {
		if c := cmp.Compare(depth(b), depth(a)); c != 0 {
			return c
		}
		return cmp.Compare(b.Offset, a.Offset)
	})
	if len(evs) <= limit {
		return evs, nil, nil
	}
	oldest := evs[0].Offset
	for _, e := range evs[1:limit] {
		oldest = min(oldest, e.Offset)
	}
	var skipped []*rooms.Event
	for _, e := range evs[limit:] {
		if e.Offset > oldest && headOf(e).StateKey != nil {
			skipped = append(skipped, e)
		}
	}
	return evs, skipped, nil
}

// withSkippedState adds to the state at the timeline's start (at) the
// skipped state events (latestByDepth) that are still the room's
// current state at upper, in place of what at has for their type and
// state key.
func (s *Server) withSkippedState(v rooms.View, roomID string, at []stateEvent, skipped []*rooms.Event, timelineStart, upper uint64, uncached bool) ([]stateEvent, error) {
	cur, err := s.stateBefore(v, roomID, upper+1, uncached)
	if err != nil {
		return nil, err
	}
	current := make(map[string]bool, len(cur))
	for _, e := range cur {
		current[e.id] = true
	}
	type key struct{ typ, sk string }
	add := map[key]*rooms.Event{}
	for _, e := range skipped {
		if h := headOf(e); current[e.EventID] && e.Offset >= timelineStart {
			add[key{h.Type, *h.StateKey}] = e
		}
	}
	if len(add) == 0 {
		return at, nil
	}
	out := make([]stateEvent, 0, len(at)+len(add))
	for _, e := range at {
		if h := e.head; h.StateKey != nil && add[key{h.Type, *h.StateKey}] != nil {
			continue
		}
		out = append(out, e)
	}
	for _, e := range skipped {
		if h := headOf(e); add[key{h.Type, *h.StateKey}] == e {
			out = append(out, readState(e))
		}
	}
	return out, nil
}

// timelineGap finds the newest gap in a sync timeline (evs, newest
// first): the number of events to keep, those after the first event found
// with a prev_event this server does not hold in the room's DAG (unknown,
// or only an outlier); len(evs) when there is none. This server's own
// events are built on events it holds, so only remote senders' events are
// checked, and a prev that is the next older event of the page costs no
// read.
func (s *Server) timelineGap(v rooms.View, evs []*rooms.Event) (int, error) {
	for i, e := range evs {
		if domainOf(headOf(e).Sender) == s.cfg.ServerName {
			continue
		}
		p, err := e.PDU()
		if err != nil {
			return 0, err
		}
		for _, id := range p.PrevEventIDs() {
			if i+1 < len(evs) && evs[i+1].EventID == id {
				continue
			}
			pe, err := v.Event(id)
			if err != nil {
				return 0, err
			}
			if pe == nil || (pe.Outlier && pe.Rejected == "") {
				return i + 1, nil
			}
		}
	}
	return len(evs), nil
}

// roomSummary gives member counts and up to five heroes (spec: room
// summary), for clients to name unnamed rooms. It reads membership
// records, not member events; the member lists are the same for every
// member and cached per room until its members change.
func (s *Server) roomSummary(v rooms.View, roomID, self string, uncached bool) (map[string]any, error) {
	joined, invited, err := s.memberLists(v, roomID, uncached)
	if err != nil {
		return nil, err
	}
	return map[string]any{"m.joined_member_count": len(joined), "m.invited_member_count": len(invited), "m.heroes": heroes(joined, invited, self)}, nil
}

// heroes are the first five members in state key order, joined or
// invited, but self. joined and invited are each in that order (as
// rooms.View.MemberIDs lists them): merging their heads costs a few
// comparisons, where copying and sorting the two lists together, in
// every member's build of a room of 200, made roomSummary 18% of the
// joined rooms' build time with 1,000 syncers (bench/README.md,
// 2026-12-08, syncers3).
func heroes(joined, invited []string, self string) []string {
	out := []string{}
	i, j := 0, 0
	for len(out) < 5 && (i < len(joined) || j < len(invited)) {
		var u string
		if j == len(invited) || (i < len(joined) && joined[i] < invited[j]) {
			u, i = joined[i], i+1
		} else {
			u, j = invited[j], j+1
		}
		if u != self {
			out = append(out, u)
		}
	}
	return out
}

// memberLists are the room's joined and invited members
// (rooms.View.MemberIDs, a point read per member), cached per room until
// its members change: the same for every member's build in between.
func (s *Server) memberLists(v rooms.View, roomID string, uncached bool) (joined, invited []string, err error) {
	read := func() (any, int, error) {
		joined, err := v.MemberIDs(roomID, "join")
		if err != nil {
			return nil, 0, err
		}
		invited, err := v.MemberIDs(roomID, "invite")
		return [2][]string{joined, invited}, stringsSize(joined) + stringsSize(invited), err
	}
	var lists any
	if uncached {
		lists, _, err = read()
	} else {
		var at uint64
		s.syncCache.clock.Read(func(c synccache.View) { at = c.MembersChangedAt(roomID) })
		lists, err = s.syncCache.parts.Get(synccache.PartKey{Kind: "members", Room: roomID}, at, read)
	}
	if err != nil {
		return nil, nil, err
	}
	return lists.([2][]string)[0], lists.([2][]string)[1], nil
}

// stringsSize is what a cached list of strings holds.
func stringsSize(ss []string) int {
	n := 24
	for _, s := range ss {
		n += len(s) + 16
	}
	return n
}

// stateChangesSize is what a cached list of state changes holds.
func stateChangesSize(changes []stateChange) int {
	n := 24
	for _, c := range changes {
		n += len(c.eventID) + len(c.value) + 40
	}
	return n
}

// sharesJoinedRoom is rooms.View.SharesJoinedRoom(self, other,
// joinedRooms) for each other of up to n a build asks about. With fewer
// questions than rooms, from each other's cached memberships; with more,
// from the rooms' cached member lists (memberLists), fetched once at the
// first question, then a binary search per room and no read: with 1,000
// syncers coming online, each build asked about hundreds of changed
// users, whose memberships missed their cache (1/16 of the budget) and
// were read from the projection in every co-member's build (1.74 s of the
// 4.06 s /sync took in a 20 s profile, bench/README.md, 2026-12-08,
// syncers3).
func (s *Server) sharesJoinedRoom(rv rooms.View, self string, joinedRooms []string, n int, uncached bool) func(other string) (bool, error) {
	if uncached {
		return func(other string) (bool, error) { return rv.SharesJoinedRoom(self, other, joinedRooms) }
	}
	if n <= len(joinedRooms) {
		return func(other string) (bool, error) {
			if other == self {
				return true, nil
			}
			ms, err := s.memberships(other)
			if err != nil {
				return false, err
			}
			for _, m := range ms {
				if _, found := slices.BinarySearch(joinedRooms, m.RoomID); found && m.Membership == "join" {
					return true, nil
				}
			}
			return false, nil
		}
	}
	var lists [][]string // each room's joined members, in state key order (rooms.View.MemberIDs)
	return func(other string) (bool, error) {
		if other == self {
			return true, nil
		}
		if lists == nil {
			lists = make([][]string, 0, len(joinedRooms))
			for _, room := range joinedRooms {
				joined, _, err := s.memberLists(rv, room, false)
				if err != nil {
					return false, err
				}
				lists = append(lists, joined)
			}
		}
		for _, joined := range lists {
			if _, found := slices.BinarySearch(joined, other); found {
				return true, nil
			}
		}
		return false, nil
	}
}

// formattedEvent is the part of a client event every reader gets,
// encoded once: all but unsigned.age (the reader's clock),
// unsigned.membership (the reader's), unsigned.transaction_id (the sending
// device's) and the bundled relations (a thread's depend on the reader).
// "unsigned" sorts after every other key of a client event, and the
// reader's unsigned keys around the shared ones, so a reader's event is
// head, then its unsigned object, then "}": the bytes json.Marshal gives
// the whole event as a map (TestIncrementalSyncCachedMatchesUncached).
type formattedEvent struct {
	head     []byte // the event without unsigned and its closing brace: `{"content":…,"type":"…"`
	unsigned []byte // the shared unsigned members, without braces (prev_content, prev_sender, replaces_state)
	ts       int64  // origin_server_ts
}

// size is what a formatted event holds.
func (f formattedEvent) size() int { return len(f.head) + len(f.unsigned) + 2*24 + 8 }

// syncClientEvent is clientEvent, encoded, with the reader-independent
// part formatted and encoded once per room position and shared by every
// member's build; what is the reader's (age, membership, transaction_id,
// bundled relations) is added per build. vis is the reader's
// (syncVisibility).
func (s *Server) syncClientEvent(v rooms.View, e *rooms.Event, sess *session, vis *visibility, uncached bool) any {
	if uncached || e.RedactedBy != "" {
		// A redacted event carries its redaction, with an age of its own:
		// rare enough to format each time.
		return s.clientEvent(v, e, sess, false)
	}
	roomAt, relCovered := s.eventsChangedAt(e.RoomID)
	f := s.formatted(v, e, roomAt)
	return s.readerEvent(v, e, e.Offset, e.Txn, f, s.relatedTo(e.RoomID, e.EventID, roomAt, relCovered), sess, vis)
}

// eventsChangedAt is the position of the room's last event (Clock's
// EventsChangedAt), and whether the relations fold has caught up with it
// (then whether anything relates to an event of the room can be kept
// until the room's next event).
func (s *Server) eventsChangedAt(roomID string) (roomAt uint64, relCovered bool) {
	relApplied := s.relationsH.Applied()
	s.syncCache.clock.Read(func(c synccache.View) {
		roomAt = c.EventsChangedAt(roomID)
		relCovered = c.Covers(relApplied) && relApplied >= roomAt
	})
	return roomAt, relCovered
}

// formatted is the event's formattedEvent, from the cache when the room
// is at position roomAt. What is formatted depends on the event alone,
// but for the prev_content of a state event that replaced another (a
// redaction of that one changes it): only those are formatted again after
// the room's next event. The rest stay cached however busy the room is;
// a redacted event itself never comes from the cache (syncClientEvent).
func (s *Server) formatted(v rooms.View, e *rooms.Event, roomAt uint64) formattedEvent {
	var at uint64
	if e.Replaces != "" {
		at = roomAt
	}
	return s.syncCache.events.Get(e.EventID, at, func() (any, int) {
		f := s.format(v, e)
		return f, f.size()
	}).(formattedEvent)
}

// format is the event's formattedEvent, formatted now.
func (s *Server) format(v rooms.View, e *rooms.Event) formattedEvent {
	ev := s.formatClientEvent(v, e, nil, false, false)
	var ts int64
	if raw, ok := ev["origin_server_ts"].(json.RawMessage); ok {
		_ = json.Unmarshal(raw, &ts)
	}
	unsigned := ev["unsigned"].(map[string]any)
	delete(unsigned, "age")
	delete(ev, "unsigned")
	head, _ := json.Marshal(ev)
	shared, _ := json.Marshal(unsigned)
	return formattedEvent{head: head[:len(head)-1], unsigned: shared[1 : len(shared)-1], ts: ts}
}

// relatedTo says whether anything relates to the event. That changes
// only with an event in its room (the spec keeps a relation within its
// room): the answer is kept until the room's next event (roomAt), once
// the relations fold has caught up with it (relCovered).
func (s *Server) relatedTo(roomID, eventID string, roomAt uint64, relCovered bool) bool {
	return s.syncCache.related.GetKeep(eventID, roomAt, func() (any, int, bool) {
		ok, err := s.relationsView().HasChildren(roomID, eventID)
		return ok || err != nil, 0, err == nil && relCovered
	}).(bool)
}

// readerEvent is the event at offset (sent with txn) for this reader: its
// formatted part f, then its unsigned object with the reader's members
// (age, bundled relations when related, membership, transaction_id)
// around the shared ones. rec is the event itself, which bundled
// relations need (nil: none). vis is the reader's (syncVisibility).
func (s *Server) readerEvent(v rooms.View, rec *rooms.Event, offset uint64, txn *facts.TxnRef, f formattedEvent, related bool, sess *session, vis *visibility) syncEvent {
	out := make([]byte, 0, len(f.head)+len(f.unsigned)+128)
	out = append(out, f.head...)
	out = append(out, `,"unsigned":{`...)
	// member starts the next unsigned member, in key order.
	member := func(key string) {
		if out[len(out)-1] != '{' {
			out = append(out, ',')
		}
		out = appendJSONString(out, key)
		out = append(out, ':')
	}
	if f.ts > 0 {
		member("age")
		out = strconv.AppendInt(out, time.Now().UnixMilli()-f.ts, 10)
	}
	if related && rec != nil {
		if rel := s.bundledRelations(v, rec, sess); rel != nil {
			raw, err := json.Marshal(rel)
			if err == nil {
				member("m.relations")
				out = append(out, raw...)
			}
		}
	}
	// The reader's membership changes are at hand in vis (cached with
	// the room's members): no read per event.
	membership := "leave"
	if m := before(vis.members, offset+1); m != "" {
		membership = m
	}
	member("membership")
	out = appendJSONString(out, membership)
	if len(f.unsigned) > 0 {
		if out[len(out)-1] != '{' {
			out = append(out, ',')
		}
		out = append(out, f.unsigned...)
	}
	if txn != nil && txn.UserID == sess.UserID && txn.DeviceID == sess.DeviceID {
		member("transaction_id")
		out = appendJSONString(out, txn.TxnID)
	}
	out = append(out, "}}"...)
	return syncEvent(out)
}

// appendJSONString appends s encoded as json.Marshal encodes a string:
// quoted as is when it needs no escape (memberships, transaction IDs,
// keys), else through json.Marshal.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			raw, _ := json.Marshal(s)
			return append(dst, raw...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// stateEvent is one event of a state section as a build uses it: its ID,
// offset, transaction and head (what filters look at), and either the
// event as read (rec) or its client form (f). A room's cached state
// (stateBefore) keeps the client form and no PDU: a state event's
// signatures, hashes, auth and prev events are most of its bytes, and its
// JSON is a slice of the whole log entry it was read with.
type stateEvent struct {
	id     string
	offset uint64
	txn    *facts.TxnRef
	head   eventHead
	rec    *rooms.Event   // the event as read; nil: from a room's cached state
	f      formattedEvent // when rec is nil
	// related: whether anything relates to the event, known (relKnown)
	// when the room's state was cached with the relations fold caught up
	// with the room: the answer holds for the same position as the state.
	related, relKnown bool
}

// readState is a state event as read for this build.
func readState(e *rooms.Event) stateEvent {
	return stateEvent{id: e.EventID, offset: e.Offset, txn: e.Txn, head: headOf(e), rec: e}
}

// readStates are state events as read for this build.
func readStates(evs []*rooms.Event) []stateEvent {
	out := make([]stateEvent, len(evs))
	for i, e := range evs {
		out[i] = readState(e)
	}
	return out
}

// cachedState is a state event as a room's cached state keeps it, and
// the bytes it holds: its client form and head, the content copied out
// of the log entry's buffer. The client form is the room's only copy (it
// bypasses the formatted events' cache, which keeps the timelines'); one
// the room's previous state held (prev) is reused unless it has a
// prev_content (formatted), whose event a redaction may have changed. A
// redacted event keeps its record (formatted per read, and redacted JSON
// is no slice of the entry).
func (s *Server) cachedState(v rooms.View, e *rooms.Event, prev map[string]formattedEvent) (stateEvent, int) {
	if e.RedactedBy != "" {
		return readState(e), 2*len(e.JSON) + 512
	}
	se := stateEvent{id: e.EventID, offset: e.Offset, txn: e.Txn, head: headOf(e)}
	if f, ok := prev[e.EventID]; ok && e.Replaces == "" {
		se.f = f
	} else {
		se.f = s.format(v, e)
	}
	se.head.Content = slices.Clone(se.head.Content)
	n := len(se.id) + len(se.head.Type) + len(se.head.Sender) + len(se.head.Content) + se.f.size() + 160
	if se.head.StateKey != nil {
		n += len(*se.head.StateKey) + 16
	}
	if se.txn != nil {
		n += len(se.txn.UserID) + len(se.txn.DeviceID) + len(se.txn.TxnID) + 48
	}
	return se, n
}

// syncStateEvent is syncClientEvent for a state section's event. One
// from a room's cached state is read again only when something relates
// to it (bundled relations need the event): roomAt and relCovered are the
// room's (eventsChangedAt).
func (s *Server) syncStateEvent(v rooms.View, roomID string, se stateEvent, roomAt uint64, relCovered bool, sess *session, vis *visibility, uncached bool) any {
	if se.rec != nil {
		return s.syncClientEvent(v, se.rec, sess, vis, uncached)
	}
	var rec *rooms.Event
	related := se.related
	if !se.relKnown {
		related = s.relatedTo(roomID, se.id, roomAt, relCovered)
	}
	if related {
		// A failed read leaves the relations out, as bundledRelations
		// does on its own read errors.
		rec, _ = v.Event(se.id)
	}
	return s.readerEvent(v, rec, se.offset, se.txn, se.f, related, sess, vis)
}

// stateBefore is v.StateBefore(roomID, "", at), the room's state before
// position at, cached per room for one position until the room's next
// event (a redaction changes a state event's content): every member's
// initial sync of a quiet room shares one read. The parts' byte budget
// alone bounds what is kept: when a count of events did (200), the rooms
// of 1,000 syncers (20 rooms each, 210 members a room) were read and
// formatted whole for every member's initial sync, ~1 s each
// (bench/README.md, 2026-12-07, syncers2).
func (s *Server) stateBefore(v rooms.View, roomID string, at uint64, uncached bool) ([]stateEvent, error) {
	if uncached {
		evs, err := v.StateBefore(roomID, "", at)
		return readStates(evs), err
	}
	pos, relCovered := s.eventsChangedAt(roomID)
	got, err := s.syncCache.parts.GetIf(synccache.PartKey{Kind: "state_before", Room: roomID}, pos,
		func(v any) bool { return v.(stateAt).at == at },
		func(old any) (any, int, bool, error) {
			evs, err := v.StateBefore(roomID, "", at)
			if err != nil {
				return nil, 0, false, err
			}
			var prev map[string]formattedEvent
			if old, ok := old.(stateAt); ok {
				prev = make(map[string]formattedEvent, len(old.evs))
				for _, se := range old.evs {
					if se.rec == nil {
						prev[se.id] = se.f
					}
				}
			}
			out := make([]stateEvent, len(evs))
			size := 24 + 8
			for i, e := range evs {
				var n int
				out[i], n = s.cachedState(v, e, prev)
				if relCovered && out[i].rec == nil {
					// Kept with the state, not in the related cache: the
					// rooms of 1,000 syncers hold ~21,000 state events,
					// beyond its budget, so each initial sync read most
					// of its 4,200 again (bench/README.md, syncers2).
					ok, err := s.relationsView().HasChildren(roomID, e.EventID)
					out[i].related, out[i].relKnown = ok, err == nil
				}
				size += n
			}
			return stateAt{at, out}, size, true, nil
		})
	if err != nil {
		return nil, err
	}
	return got.(stateAt).evs, nil
}

// stateAt is a room's state before a position.
type stateAt struct {
	at  uint64
	evs []stateEvent
}

// syncVisibility is newVisibility with the room's history_visibility
// changes and the user's membership changes cached until the room's state
// (or members) change: the same for every build in between.
func (s *Server) syncVisibility(v rooms.View, roomID, userID string, uncached bool) (*visibility, error) {
	if uncached {
		return s.newVisibility(v, roomID, userID)
	}
	var stateAt, membersAt uint64
	s.syncCache.clock.Read(func(c synccache.View) { stateAt, membersAt = c.StateChangedAt(roomID), c.MembersChangedAt(roomID) })
	hv, err := s.syncCache.parts.Get(synccache.PartKey{Kind: "history_visibility", Room: roomID}, stateAt, func() (any, int, error) {
		changes, err := stateChanges(v, roomID, stateres.MRoomHistoryVisibility, "", "history_visibility")
		return changes, stateChangesSize(changes), err
	})
	if err != nil {
		return nil, err
	}
	members, err := s.syncCache.parts.Get(synccache.PartKey{Kind: "membership", Room: roomID, User: userID}, membersAt, func() (any, int, error) {
		changes, err := stateChanges(v, roomID, stateres.MRoomMember, userID, "membership")
		return changes, stateChangesSize(changes), err
	})
	if err != nil {
		return nil, err
	}
	erased, err := s.erasedUsers()
	if err != nil {
		return nil, err
	}
	return &visibility{v: v, userID: userID, hv: hv.([]stateChange), members: members.([]stateChange), erased: erased}, nil
}

// maxMemberScan bounds the timeline events newlySharing reads per room;
// past it the room's members are read instead.
const maxMemberScan = 200

// newlySharing adds to into the users who began to share a joined room
// with user in (since, pos]: everyone in a room the user joined then, and
// whoever joined one of the user's rooms then. membersChanged (nil: ask
// the projection) says which rooms' members may have changed after since.
func (s *Server) newlySharing(rv rooms.View, user string, ms []rooms.Membership, membersChanged func(string) bool, since, pos uint64, into map[string]bool, uncached bool) error {
	for _, m := range ms {
		if m.Membership != "join" || m.Offset > pos {
			continue
		}
		if m.Offset > since {
			members, _, err := s.memberLists(rv, m.RoomID, uncached)
			if err != nil {
				return err
			}
			for _, u := range members {
				into[u] = true
			}
			continue
		}
		if membersChanged != nil {
			if !membersChanged(m.RoomID) {
				continue
			}
		} else if at, err := rv.ChangedAt(m.RoomID); err != nil {
			return err
		} else if at <= since {
			continue
		}
		tl, err := rv.Timeline(m.RoomID, since, true, maxMemberScan+1, pos)
		if err != nil {
			return err
		}
		var users []string
		if len(tl) > maxMemberScan {
			if users, _, err = s.memberLists(rv, m.RoomID, uncached); err != nil {
				return err
			}
		} else {
			for _, te := range tl {
				e, err := rv.Event(te.EventID)
				if err != nil {
					return err
				}
				if e == nil {
					continue
				}
				if h := headOf(e); h.Type == stateres.MRoomMember && h.StateKey != nil {
					users = append(users, *h.StateKey)
				}
			}
		}
		for _, u := range users {
			if into[u] {
				continue
			}
			um, err := rv.Membership(u, m.RoomID)
			if err != nil {
				return err
			}
			if um != nil && um.Membership == "join" && um.Offset > since && um.Offset <= pos {
				into[u] = true
			}
		}
	}
	delete(into, user)
	return nil
}

// invitedByIgnored reports whether the invite m was sent by one of the
// ignored users.
func (s *Server) invitedByIgnored(v rooms.View, m rooms.Membership, ignored map[string]bool) (bool, error) {
	if len(ignored) == 0 {
		return false, nil
	}
	e, err := v.Event(m.EventID)
	if err != nil || e == nil {
		return false, err
	}
	return ignored[headOf(e).Sender], nil
}

// strippedState is the stripped state an invitee or knocker sees (spec:
// "stripped state"), including the create event and their own membership
// event.
func (s *Server) strippedState(v rooms.View, m rooms.Membership) (map[string]any, error) {
	if room, err := v.Room(m.RoomID); err != nil {
		return nil, err
	} else if room == nil {
		return remoteStrippedState(v, m) // an invite over federation
	}
	evs := []map[string]any{}
	for _, typ := range []string{stateres.MRoomCreate, stateres.MRoomJoinRules, "m.room.name", "m.room.avatar", "m.room.canonical_alias", "m.room.encryption", "m.room.topic"} {
		e, err := v.StateEvent(m.RoomID, typ, "")
		if err != nil {
			return nil, err
		}
		if e != nil && typ == stateres.MRoomCreate {
			evs = append(evs, strippedCreate(e))
		} else if e != nil {
			evs = append(evs, stripped(e))
		}
	}
	inv, err := v.Event(m.EventID)
	if err != nil {
		return nil, err
	}
	if inv != nil {
		evs = append(evs, stripped(inv))
	}
	return map[string]any{"events": evs}, nil
}

func stripped(e *rooms.Event) map[string]any {
	h := headOf(e)
	out := map[string]any{"type": h.Type, "sender": h.Sender, "content": h.Content}
	if h.StateKey != nil {
		out["state_key"] = *h.StateKey
	}
	return out
}

// presenceSection lists the presence of the user and of everyone sharing
// a joined room with them whose presence changed visibly in (since, pos];
// on an initial sync, of all of them. The content is derived now
// (presenceContent), so idle and offline show as such.
func (s *Server) presenceSection(sess *session, f *syncFilter, rv rooms.View, ms []rooms.Membership, joinedRooms []string, membersChanged func(string) bool, since, pos uint64, now int64, uncached bool) ([]map[string]any, error) {
	out := []map[string]any{}
	if !f.Presence.allowsType("m.presence") {
		// A client that filters presence out (a bot, a receiver of one
		// room) reads nothing for it: with 1,000 syncers coming online,
		// each build read every changed user's memberships to drop them
		// all here (bench/README.md, 2026-12-07, syncers2).
		return out, nil
	}
	uv := s.userdataView()
	var candidates []string
	// newly are the users who began to share a room with the user in
	// (since, pos]: their presence is sent whenever it was set, since the
	// client has not seen it (spec: presence of the users one shares a
	// room with).
	newly := map[string]bool{}
	if since == 0 {
		users := map[string]bool{sess.UserID: true}
		for _, roomID := range joinedRooms {
			members, _, err := s.memberLists(rv, roomID, uncached)
			if err != nil {
				return nil, err
			}
			for _, u := range members {
				users[u] = true
			}
		}
		candidates = slices.Sorted(maps.Keys(users))
	} else {
		// Incremental: only the users whose presence changed, usually few;
		// each is checked against the rooms we share.
		changed, err := uv.PresenceChanges(since, pos)
		if err != nil {
			return nil, err
		}
		shares := s.sharesJoinedRoom(rv, sess.UserID, joinedRooms, len(changed), uncached)
		for _, u := range changed {
			if !f.Presence.allows("m.presence", u, nil) {
				continue // before reading whether we share a room
			}
			if ok, err := shares(u); err != nil {
				return nil, err
			} else if ok {
				candidates = append(candidates, u)
			}
		}
		if err := s.newlySharing(rv, sess.UserID, ms, membersChanged, since, pos, newly, uncached); err != nil {
			return nil, err
		}
		for u := range newly {
			if !slices.Contains(candidates, u) {
				candidates = append(candidates, u)
			}
		}
		slices.Sort(candidates)
	}
	for _, u := range candidates {
		if !f.Presence.allows("m.presence", u, nil) {
			continue
		}
		p, err := s.presenceOf(uv, u)
		if err != nil {
			return nil, err
		}
		if p == nil || (p.Offset <= since && !newly[u]) || p.Offset > pos {
			continue
		}
		out = append(out, map[string]any{"type": "m.presence", "sender": u, "content": presenceContent(p, now)})
	}
	return out, nil
}
