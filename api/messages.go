package api

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// hasPower reports whether user has the power for what: "redact", "kick",
// "ban", "invite", or "state:<type>" / "event:<type>".
func (s *Server) hasPower(roomID, userID, what string) (bool, error) {
	room, err := s.roomsView().Room(roomID)
	if err != nil || room == nil {
		return false, err
	}
	version, ok := stateres.Version(room.Version)
	if !ok {
		return false, nil
	}
	v := s.roomsView()
	create, err := v.StatePDU(roomID, stateres.MRoomCreate, "")
	if err != nil {
		return false, err
	}
	powers, err := v.StatePDU(roomID, stateres.MRoomPowerLevels, "")
	if err != nil {
		return false, err
	}
	pl := auth.ParsePowerLevels(version, create, powers)
	var need auth.Level
	switch {
	case what == "redact":
		need = pl.Redact()
	case what == "kick":
		need = pl.Kick()
	case what == "ban":
		need = pl.Ban()
	case what == "invite":
		need = pl.Invite()
	case strings.HasPrefix(what, "state:"):
		need = pl.EventLevel(what[6:], true)
	case strings.HasPrefix(what, "event:"):
		need = pl.EventLevel(what[6:], false)
	}
	return pl.UserLevel(userID).AtLeast(need), nil
}

// Stream tokens are log offsets: token P stands between offsets <= P and
// offsets > P. Sync tokens are "s<P>", pagination tokens "t<P>"; either
// is accepted wherever a token is.
func streamToken(p uint64) string { return "s" + strconv.FormatUint(p, 10) }
func pageToken(p uint64) string   { return "t" + strconv.FormatUint(p, 10) }

// After a point-in-time restore (adminstate.Restore) the positions past
// its cut exist twice: in the lost timeline, whose tokens clients that
// synced after the cut still hold, and in the restored one. So a token
// past the cut names the restore it was handed out after, "s<P>_r<R>"
// with R the offset of the Restored entry, and every endpoint that reads
// a token refuses one past the cut without it (parseTokenAt): /sync with
// M_UNKNOWN_POS (start again without since), /messages and the others
// with M_INVALID_PARAM, instead of reading the restored timeline from a
// position that meant something else in the lost one. The entries the
// restore appended after the cut (up to the Restored one) change nothing
// the cut's clients could have seen, so a position among them is handed
// out as the cut's: a restored server answers as the original did at the
// cut.
func (s *Server) tokenAt(prefix string, pos uint64) (string, error) {
	return s.posTokenAt(prefix, rooms.Pos{Offset: pos, Seq: rooms.PosEnd})
}

// posTokenAt is tokenAt for a position that may lie inside backfilled
// history (posToken's "t<P>.<seq>").
func (s *Server) posTokenAt(prefix string, p rooms.Pos) (string, error) {
	rs, err := s.adminState().Restored()
	if err != nil {
		return "", err
	}
	tok := prefix + strings.TrimPrefix(posToken(p), "t")
	switch {
	case rs == nil || p.Offset <= rs.Cut:
		return tok, nil
	case p.Offset <= rs.Offset:
		return prefix + strconv.FormatUint(rs.Cut, 10), nil
	}
	return tok + "_r" + strconv.FormatUint(rs.Offset, 10), nil
}

// parseSince is parseToken for a /sync since token, refusing one from a
// timeline a restore cut away.
func (s *Server) parseSince(tok string) (uint64, error) {
	p, err := s.parseTokenAt(tok, "M_UNKNOWN_POS", "Sync again without since (an initial sync)")
	return p.Offset, err
}

// parsePageToken is parsePos for a pagination token (/messages,
// /relations, /threads, /members?at=, /keys/changes), refusing one from
// a timeline a restore cut away.
func (s *Server) parsePageToken(tok string) (rooms.Pos, error) {
	return s.parseTokenAt(tok, "M_INVALID_PARAM", "Page again without from, or from a token of a sync made since the restore")
}

// parseOffsetToken is parsePageToken for the endpoints that page by log
// offset only.
func (s *Server) parseOffsetToken(tok string) (uint64, error) {
	p, err := s.parsePageToken(tok)
	return p.Offset, err
}

func (s *Server) parseTokenAt(tok, errcode, advice string) (rooms.Pos, error) {
	p, err := parsePos(tok)
	if err != nil {
		return p, err
	}
	rs, err := s.adminState().Restored()
	if err != nil || rs == nil || p.Offset <= rs.Cut {
		return p, err
	}
	var r uint64
	if i := strings.Index(tok, "_r"); i >= 0 {
		r, _ = strconv.ParseUint(tok[i+2:], 10, 64)
	}
	if r != rs.Offset {
		return rooms.Pos{}, merr(http.StatusBadRequest, errcode, fmt.Sprintf(
			"This token is from before the server was restored from a backup to an earlier point (log offset %d): the timeline it points into is gone. %s", rs.Cut, advice))
	}
	return p, nil
}

func parseToken(tok string) (uint64, error) {
	p, err := parsePos(tok)
	return p.Offset, err
}

// A pagination token inside backfilled history (rooms.Pos with a Seq
// short of rooms.PosEnd) is "t<P>.<seq>": after offset P's event and the
// history placed there up to seq. "t<P>" is the position after all of P.
func posToken(p rooms.Pos) string {
	if p.Seq == rooms.PosEnd {
		return pageToken(p.Offset)
	}
	return pageToken(p.Offset) + "." + strconv.FormatUint(p.Seq, 10)
}

func parsePos(tok string) (rooms.Pos, error) {
	t := strings.TrimLeft(tok, "st")
	if i := strings.IndexByte(t, '_'); i >= 0 {
		t = t[:i]
	}
	seq := rooms.PosEnd
	if off, s, ok := strings.Cut(t, "."); ok {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == rooms.PosEnd {
			return rooms.Pos{}, errInvalidParam("Invalid pagination token %q", tok)
		}
		t, seq = off, n
	}
	p, err := strconv.ParseUint(t, 10, 64)
	if err != nil || t == "" {
		return rooms.Pos{}, errInvalidParam("Invalid pagination token %q", tok)
	}
	return rooms.Pos{Offset: p, Seq: seq}, nil
}

// roomEventFilter is the subset of the spec's RoomEventFilter applied to
// timelines.
type roomEventFilter struct {
	Limit                   *int     `json:"limit,omitempty"`
	Types                   []string `json:"types,omitempty"`
	NotTypes                []string `json:"not_types,omitempty"`
	Senders                 []string `json:"senders,omitempty"`
	NotSenders              []string `json:"not_senders,omitempty"`
	Rooms                   []string `json:"rooms,omitempty"`
	NotRooms                []string `json:"not_rooms,omitempty"`
	LazyLoadMembers         bool     `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers bool     `json:"include_redundant_members,omitempty"`
	// UnreadThreadNotifications asks /sync for per-thread unread counts.
	UnreadThreadNotifications bool  `json:"unread_thread_notifications,omitempty"`
	ContainsURL               *bool `json:"contains_url,omitempty"`
}

// typeMatches implements the filter's type patterns ('*' wildcards).
func typeMatches(pattern, typ string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == typ
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(typ, parts[0]) {
		return false
	}
	typ = typ[len(parts[0]):]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(typ, p)
		if i < 0 {
			return false
		}
		typ = typ[i+len(p):]
	}
	return strings.HasSuffix(typ, parts[len(parts)-1])
}

func (f *roomEventFilter) allowsRoom(roomID string) bool {
	if f == nil {
		return true
	}
	if slices.Contains(f.NotRooms, roomID) {
		return false
	}
	return f.Rooms == nil || slices.Contains(f.Rooms, roomID)
}

// allowsType reports whether the filter's types let events of type typ
// through (from some sender): when not, a section of that type alone needs
// no reading at all.
func (f *roomEventFilter) allowsType(typ string) bool {
	if f == nil {
		return true
	}
	for _, p := range f.NotTypes {
		if typeMatches(p, typ) {
			return false
		}
	}
	return f.Types == nil || slices.ContainsFunc(f.Types, func(p string) bool { return typeMatches(p, typ) })
}

func (f *roomEventFilter) allows(typ, sender string, content json.RawMessage) bool {
	if f == nil {
		return true
	}
	if !f.allowsType(typ) {
		return false
	}
	if slices.Contains(f.NotSenders, sender) {
		return false
	}
	if f.Senders != nil && !slices.Contains(f.Senders, sender) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL *string `json:"url"`
		}
		_ = json.Unmarshal(content, &c)
		if (c.URL != nil) != *f.ContainsURL {
			return false
		}
	}
	return true
}

// eventHead is the part of a stored event filters look at.
type eventHead struct {
	Type     string          `json:"type"`
	Sender   string          `json:"sender"`
	StateKey *string         `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// decodeHead is the event's head, from the PDU rooms.View.Event parsed
// when it loaded the event (kept with it, and in the event cache), so no
// JSON is decoded again; a failure is corruption (the projection served
// JSON that is not the PDU it parsed), reported as such.
func decodeHead(e *rooms.Event) (eventHead, error) {
	p, err := e.PDU()
	if err != nil {
		return eventHead{}, fmt.Errorf("rooms projection: event %s does not decode: %w", e.EventID, err)
	}
	return eventHead{Type: p.Type(), Sender: p.Sender(), StateKey: p.StateKey(), Content: p.Content()}, nil
}

// headOf is decodeHead where no error can be returned (a visibility
// predicate, a stripped state event). Events reach it through
// rooms.View.Event, which parsed the same JSON as a PDU, so its error
// cannot happen short of a bug.
func headOf(e *rooms.Event) eventHead {
	h, _ := decodeHead(e)
	return h
}

// page walks a room's timeline from position pos in one direction,
// collecting up to limit events the filter allows and the user may see
// (vis; nil: no check), never past bound (exclusive when walking
// backwards, inclusive forwards). It returns the events in walking order
// and the position to continue from, or done when the timeline is
// exhausted. Walking backwards (ctx set), it fills gaps in the room's
// history as it meets them (backfill).
func (s *Server) pageAt(ctx context.Context, v rooms.View, roomID string, pos rooms.Pos, forward bool, limit int, bound rooms.Pos, f *roomEventFilter, vis *visibility) (evs []*rooms.Event, next rooms.Pos, done bool, err error) {
	return s.walk(ctx, v, roomID, pos, forward, limit, bound, f, vis, true)
}

// page is pageAt over the events as they arrived, without backfilled
// history (a stream reader's view: /sync, /context, search context), with
// offsets for positions: walking backwards from pos takes offsets <= pos
// down to bound exclusive; forwards offsets > pos up to bound inclusive
// (0: none).
func (s *Server) page(v rooms.View, roomID string, pos uint64, forward bool, limit int, bound uint64, f *roomEventFilter, vis *visibility) ([]*rooms.Event, uint64, bool, error) {
	from, to := rooms.Pos{Offset: pos, Seq: rooms.PosEnd}, rooms.Pos{Offset: bound, Seq: rooms.PosEnd}
	if forward {
		from.Seq = 0
		if bound == 0 {
			to.Offset = ^uint64(0)
		}
	}
	evs, next, done, err := s.walk(context.TODO(), v, roomID, from, forward, limit, to, f, vis, false)
	return evs, next.Offset, done, err
}

func (s *Server) walk(ctx context.Context, v rooms.View, roomID string, pos rooms.Pos, forward bool, limit int, bound rooms.Pos, f *roomEventFilter, vis *visibility, history bool) (evs []*rooms.Event, next rooms.Pos, done bool, err error) {
	const batch = 100
	scanned := 0
	// An admin's history purge (api/admin) hides the non-state events up
	// to an offset.
	purged, err := s.adminState().PurgedUpTo(roomID)
	if err != nil {
		return nil, rooms.Pos{}, false, err
	}
	fill := history && !forward && s.roomFed != nil
	for len(evs) < limit {
		var tl []rooms.TimelineEntry
		switch {
		case history:
			tl, err = v.Page(roomID, pos, forward, batch, bound)
		case forward:
			b := bound.Offset
			if b == ^uint64(0) {
				b = 0 // unbounded
			}
			tl, err = v.Timeline(roomID, pos.Offset, true, batch, b)
		default:
			tl, err = v.Timeline(roomID, pos.Offset+1, false, batch, bound.Offset)
		}
		if err != nil {
			return nil, rooms.Pos{}, false, err
		}
		if len(tl) == 0 {
			return evs, pos, true, nil
		}
	entries:
		for i, te := range tl {
			e, err := v.Event(te.EventID)
			if err != nil {
				return nil, rooms.Pos{}, false, err
			}
			if e == nil && te.Offset <= purged {
				// Erased by the purge (api/admin) while the projection is
				// rebuilt without it.
				if forward {
					pos = te.At()
				} else {
					pos = te.Before()
				}
				continue
			}
			if e == nil {
				// The fold writes a timeline entry and its record in one
				// batch: a missing record is corruption, not a gap.
				return nil, rooms.Pos{}, false, fmt.Errorf("rooms projection: timeline of %s at offset %d names event %s, which has no record; rebuild it with `engram rebuild --projection rooms`", roomID, te.Offset, te.EventID)
			}
			if fill {
				if filled, err := s.fillGap(ctx, v, roomID, te, e, tl[i+1:]); err != nil {
					return nil, rooms.Pos{}, false, err
				} else if filled {
					// History now lies just before te: read on from there.
					v = s.roomsView()
					pos = te.Before()
					if err := s.keepEvent(&evs, e, te, purged, f, vis); err != nil {
						return nil, rooms.Pos{}, false, err
					}
					if len(evs) == limit {
						return evs, pos, false, nil
					}
					break entries
				}
			}
			if forward {
				pos = te.At()
			} else {
				pos = te.Before()
			}
			if err := s.keepEvent(&evs, e, te, purged, f, vis); err != nil {
				return nil, rooms.Pos{}, false, err
			}
			if len(evs) == limit {
				return evs, pos, false, nil
			}
		}
		scanned += len(tl)
		if scanned > 100*limit+1000 {
			// A very selective filter: hand back a token and let the client
			// page on rather than scanning the whole history in one request.
			return evs, pos, false, nil
		}
	}
	return evs, pos, false, nil
}

// keepEvent appends e to evs when it is shown: not purged, allowed by the
// filter and visible to the reader.
func (s *Server) keepEvent(evs *[]*rooms.Event, e *rooms.Event, te rooms.TimelineEntry, purged uint64, f *roomEventFilter, vis *visibility) error {
	h, err := decodeHead(e)
	if err != nil {
		return err
	}
	if te.Offset <= purged && h.StateKey == nil {
		return nil
	}
	if !f.allows(h.Type, h.Sender, h.Content) {
		return nil
	}
	if te.Seq > 0 {
		if !vis.canSeeHistorical(e) {
			return nil
		}
	} else if !vis.canSee(e) {
		return nil
	}
	*evs = append(*evs, e)
	return nil
}

func parseFilterParam(raw string) (*roomEventFilter, error) {
	if raw == "" {
		return nil, nil
	}
	var f roomEventFilter
	if err := json.Unmarshal([]byte(raw), &f); err != nil {
		return nil, errInvalidParam("filter is not a valid RoomEventFilter: %v", err)
	}
	return &f, nil
}

func (s *Server) messages(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	upper, vis, err := s.readAccess(roomID, sess.UserID)
	if err != nil {
		return err
	}
	if err := s.ignoring(vis); err != nil {
		return err
	}
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir != "b" && dir != "f" {
		return errInvalidParam("dir must be 'b' or 'f'")
	}
	forward := dir == "f"
	limit := 10
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 0 {
			return errInvalidParam("limit must be a non-negative integer")
		}
	}
	limit = min(limit, 1000)
	f, err := parseFilterParam(q.Get("filter"))
	if err != nil {
		return err
	}
	if f != nil && f.Limit != nil && *f.Limit < limit {
		limit = *f.Limit
	}
	top := rooms.Pos{Offset: upper, Seq: rooms.PosEnd}
	var from rooms.Pos
	if t := q.Get("from"); t != "" {
		if from, err = s.parsePageToken(t); err != nil {
			return err
		}
	} else if !forward {
		from = top
	}
	var bound rooms.Pos // backward: stop at the 'to' token; forward: at 'to' or upper
	if forward {
		bound = top
	}
	if t := q.Get("to"); t != "" {
		to, err := s.parsePageToken(t)
		if err != nil {
			return err
		}
		if !forward || to.Less(bound) {
			bound = to
		}
	}
	if !forward && top.Less(from) {
		from = top
	}
	v := s.roomsView()
	var evs []*rooms.Event
	next, done := from, true
	if limit > 0 {
		evs, next, done, err = s.pageAt(r.Context(), v, roomID, from, forward, limit, bound, f, vis)
		if err != nil {
			return err
		}
		v = s.roomsView() // backfill may have moved it
	}
	chunk := make([]map[string]any, 0, len(evs))
	senders := map[string]uint64{} // sender -> offset of their newest event in the chunk
	for _, e := range evs {
		chunk = append(chunk, s.clientEvent(v, e, sess, true))
		h, err := decodeHead(e)
		if err != nil {
			return err
		}
		if e.Offset > senders[h.Sender] {
			senders[h.Sender] = e.Offset
		}
	}
	start, err := s.posTokenAt("t", from)
	if err != nil {
		return err
	}
	resp := map[string]any{"start": start, "chunk": chunk}
	// The spec omits end once no further events are available. A page
	// that holds events still gets one, as Synapse answers and as
	// Complement (TestRoomImageRoundtrip) and clients expect: paging on
	// from it gives an empty chunk without end, which is where they stop.
	if !done || len(chunk) > 0 {
		if resp["end"], err = s.posTokenAt("t", next); err != nil {
			return err
		}
	}
	if f != nil && f.LazyLoadMembers {
		// Each sender's membership as it was at their event in the chunk.
		state := []map[string]any{}
		for _, u := range slices.Sorted(maps.Keys(senders)) {
			id, err := v.StateAt(roomID, stateres.MRoomMember, u, senders[u]+1)
			if err != nil {
				return err
			}
			if id == "" {
				continue // no membership event before theirs (a remote sender's outlier)
			}
			m, err := v.Event(id)
			if err != nil {
				return err
			}
			if m == nil {
				return fmt.Errorf("rooms projection: membership %s of %s in %s has no record; rebuild it with `engram rebuild --projection rooms`", id, u, roomID)
			}
			state = append(state, s.clientEvent(v, m, sess, true))
		}
		resp["state"] = state
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// historicalScan bounds the entries read to find where a backfilled event
// was placed: it lies before the gap its backfill filled, and that gap is
// at most the entries appended between the gap and the backfill away.
const historicalScan = 10000

// historicalEntry finds the timeline entry of e when e is backfilled
// history (its record's offset is the backfill's, and its place is among
// the history entries placed before the gap); historical is false for an
// event whose timeline entry is at its own offset.
func historicalEntry(v rooms.View, roomID string, e *rooms.Event) (te rooms.TimelineEntry, historical bool, err error) {
	own, err := v.Timeline(roomID, e.Offset-1, true, 1, e.Offset)
	if err != nil || len(own) == 1 && own[0].EventID == e.EventID || e.Outlier {
		return te, false, err
	}
	from := rooms.Pos{Offset: e.Offset, Seq: rooms.PosEnd}
	for scanned := 0; scanned < historicalScan; {
		entries, err := v.Page(roomID, from, false, 500, rooms.Pos{})
		if err != nil || len(entries) == 0 {
			return te, false, err
		}
		for _, x := range entries {
			if x.EventID == e.EventID {
				return x, x.Seq > 0, nil
			}
			from = x.Before()
		}
		scanned += len(entries)
	}
	return te, false, nil
}

func (s *Server) eventContext(w http.ResponseWriter, r *http.Request, sess *session) error {
	ve, err := s.visibleEvent(r, sess)
	if err != nil {
		return err
	}
	roomID, e, upper, vis, v := ve.roomID, ve.event, ve.upper, ve.vis, ve.view
	if err := s.ignoring(vis); err != nil {
		return err
	}
	limit := 10
	if l := r.URL.Query().Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 0 {
			return errInvalidParam("limit must be a non-negative integer")
		}
	}
	limit = min(limit, 1000)
	f, err := parseFilterParam(r.URL.Query().Get("filter"))
	if err != nil {
		return err
	}
	te, historical, err := historicalEntry(v, roomID, e)
	if err != nil {
		return err
	}
	var (
		before, after []*rooms.Event
		start, end    string
	)
	if historical {
		// A backfilled event sits inside the history placed before a gap:
		// the pages around it, and their tokens, are positions in that
		// history (as /messages pages it), not log offsets.
		var startPos, endPos rooms.Pos
		if before, startPos, _, err = s.pageAt(r.Context(), v, roomID, te.Before(), false, limit/2, rooms.Pos{}, f, vis); err != nil {
			return err
		}
		v = s.roomsView() // backfill may have moved it
		if after, endPos, _, err = s.pageAt(r.Context(), v, roomID, te.At(), true, limit-limit/2, rooms.Pos{Offset: upper, Seq: rooms.PosEnd}, f, vis); err != nil {
			return err
		}
		if start, err = s.posTokenAt("t", startPos); err != nil {
			return err
		}
		if end, err = s.posTokenAt("t", endPos); err != nil {
			return err
		}
	} else {
		var startPos, endPos uint64
		if before, startPos, _, err = s.page(v, roomID, e.Offset-1, false, limit/2, 0, f, vis); err != nil {
			return err
		}
		if after, endPos, _, err = s.page(v, roomID, e.Offset, true, limit-limit/2, upper, f, vis); err != nil {
			return err
		}
		if start, err = s.tokenAt("t", startPos); err != nil {
			return err
		}
		if end, err = s.tokenAt("t", endPos); err != nil {
			return err
		}
	}
	conv := func(evs []*rooms.Event) []map[string]any {
		out := make([]map[string]any, 0, len(evs))
		for _, x := range evs {
			out = append(out, s.clientEvent(v, x, sess, true))
		}
		return out
	}
	// Spec: the state of the room at the last event returned.
	last := e.Offset
	if len(after) > 0 {
		last = after[len(after)-1].Offset
	}
	stateEvs, err := v.StateBefore(roomID, "", last+1)
	if err != nil {
		return err
	}
	if f != nil && f.LazyLoadMembers {
		senders := map[string]bool{}
		for _, x := range append(append(slices.Clone(before), e), after...) {
			h, err := decodeHead(x)
			if err != nil {
				return err
			}
			senders[h.Sender] = true
		}
		kept := stateEvs[:0]
		for _, x := range stateEvs {
			h, err := decodeHead(x)
			if err != nil {
				return err
			}
			if h.Type != stateres.MRoomMember || h.StateKey == nil || senders[*h.StateKey] {
				kept = append(kept, x)
			}
		}
		stateEvs = kept
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"event": s.clientEvent(v, e, sess, true), "events_before": conv(before), "events_after": conv(after),
		"start": start, "end": end, "state": conv(stateEvs),
	})
	return nil
}

// canSeeHistorical is canSee for a backfilled event, which sits before
// every offset after its place: the state it is judged by is the state
// at it, not the room's history of current state.
func (vis *visibility) canSeeHistorical(e *rooms.Event) bool {
	if vis == nil {
		return true
	}
	state, ok, err := vis.v.StateIDsBefore(e.EventID)
	if err != nil || !ok {
		return false
	}
	value := func(typ, stateKey, field string) string {
		id := state[stateres.StateKeyTuple{Type: typ, StateKey: stateKey}]
		if id == "" {
			return ""
		}
		se, err := vis.v.Event(id)
		if err != nil || se == nil {
			return ""
		}
		var c map[string]any
		_ = json.Unmarshal(headOf(se).Content, &c)
		v, _ := c[field].(string)
		return v
	}
	// History precedes what arrived here: any join of the reader's that
	// this server folded came after the event ("shared"), hence offset 0.
	return vis.canSeeGiven(e, value(stateres.MRoomHistoryVisibility, "", "history_visibility"), value(stateres.MRoomMember, vis.userID, "membership"), 0)
}
