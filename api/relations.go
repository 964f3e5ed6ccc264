package api

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strconv"

	"github.com/engram-hs/engram/projections/relations"
	"github.com/engram-hs/engram/projections/rooms"
)

// Relations, threads and bundled aggregations (spec: client-server-api,
// "Forming relationships between events", "Threading").

func (s *Server) relationRoutes() {
	for _, p := range []string{"/relations/{eventId}", "/relations/{eventId}/{relType}", "/relations/{eventId}/{relType}/{eventType}"} {
		s.handle("GET", "/_matrix/client/v1/rooms/{roomId}"+p, s.authed(s.getRelations))
	}
	s.handle("GET", "/_matrix/client/v1/rooms/{roomId}/threads", s.authed(s.getThreads))
}

func (s *Server) relationsView() relations.View { return relations.NewView(s.relationsH.Reader()) }

// relationsCaughtUp waits (bounded) until the relations projection folded
// what the log holds, so a relation just sent is listed.
func (s *Server) relationsCaughtUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, searchCatchUp)
	defer cancel()
	err := s.relationsH.WaitApplied(ctx, s.log.LastOffset())
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// relationsAsOfRooms waits (bounded) until the relations projection has
// folded what the rooms projection has: a write waits for rooms only, so
// right after a client's redaction of a thread reply the event it reads
// back showed the redaction but the thread summary from before it
// (TestEditsThreadsReactions failed so in CI). /sync waits for both at its
// own position instead.
func (s *Server) relationsAsOfRooms() {
	if s.relationsH == nil {
		return
	}
	at := s.roomsH.Applied()
	if s.relationsH.Applied() >= at {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), searchCatchUp)
	defer cancel()
	_ = s.relationsH.WaitApplied(ctx, at) // on a timeout or error, the bundle is as the projection has it
}

// maxRecursion is how deep recurse=true follows relations of relations.
const maxRecursion = 3

func (s *Server) getRelations(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	upper, vis, err := s.readAccess(roomID, sess.UserID)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit := 5
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 {
			return errInvalidParam("limit must be a positive integer")
		}
	}
	limit = min(limit, 1000)
	forward := false
	switch q.Get("dir") {
	case "", "b":
	case "f":
		forward = true
	default:
		return errInvalidParam("dir must be b or f")
	}
	var from, to uint64
	var hasFrom, hasTo bool
	if t := q.Get("from"); t != "" {
		if from, err = s.parseOffsetToken(t); err != nil {
			return err
		}
		hasFrom = true
	}
	if t := q.Get("to"); t != "" {
		if to, err = s.parseOffsetToken(t); err != nil {
			return err
		}
		hasTo = true
	}
	recurse := false
	switch q.Get("recurse") {
	case "", "false":
	case "true":
		recurse = true
	default:
		return errInvalidParam("recurse must be true or false")
	}
	if err := s.relationsCaughtUp(r.Context()); err != nil {
		return err
	}
	v := s.roomsView()
	parentID := r.PathValue("eventId")
	parent, err := v.Event(parentID)
	if err != nil {
		return err
	}
	if !visibleIn(parent, roomID, upper, vis) {
		return errNotFound("Event not found")
	}
	relType, eventType := r.PathValue("relType"), r.PathValue("eventType")
	rv := s.relationsView()
	children, err := rv.Children(roomID, parentID, relType)
	if err != nil {
		return err
	}
	depth := 0
	if recurse {
		frontier := children
		for depth < maxRecursion && len(frontier) > 0 {
			depth++
			var next []relations.Child
			for _, c := range frontier {
				cs, err := rv.Children(roomID, c.EventID, relType)
				if err != nil {
					return err
				}
				next = append(next, cs...)
			}
			children = append(children, next...)
			frontier = next
		}
		slices.SortFunc(children, func(a, b relations.Child) int { return cmpU64(a.Offset, b.Offset) })
	}
	if !forward {
		slices.Reverse(children)
	}
	chunk := []map[string]any{}
	var last uint64
	more := false
	for _, c := range children {
		if eventType != "" && c.Type != eventType {
			continue
		}
		if hasFrom && ((forward && c.Offset <= from) || (!forward && c.Offset > from)) {
			continue
		}
		if hasTo && ((forward && c.Offset > to) || (!forward && c.Offset <= to)) {
			continue
		}
		e, err := v.Event(c.EventID)
		if err != nil {
			return err
		}
		if !visibleIn(e, roomID, upper, vis) {
			continue
		}
		if len(chunk) == limit {
			more = true
			break
		}
		chunk = append(chunk, s.clientEvent(v, e, sess, true))
		last = c.Offset
	}
	out := map[string]any{"chunk": chunk}
	if more {
		next := last - 1
		if forward {
			next = last
		}
		if out["next_batch"], err = s.tokenAt("t", next); err != nil {
			return err
		}
	}
	if hasFrom {
		out["prev_batch"] = q.Get("from")
	}
	if recurse {
		out["recursion_depth"] = depth
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *Server) getThreads(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	upper, vis, err := s.readAccess(roomID, sess.UserID)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	participated := false
	switch q.Get("include") {
	case "", "all":
	case "participated":
		participated = true
	default:
		return errInvalidParam("include must be all or participated")
	}
	limit := 5
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 {
			return errInvalidParam("limit must be a positive integer")
		}
	}
	limit = min(limit, 100)
	var before uint64
	if t := q.Get("from"); t != "" {
		if before, err = s.parseOffsetToken(t); err != nil {
			return err
		}
		before++ // the token is the last activity already listed, minus one
	}
	if err := s.relationsCaughtUp(r.Context()); err != nil {
		return err
	}
	v := s.roomsView()
	rv := s.relationsView()
	var roots []*rooms.Event
	var lastActivity uint64
	more := false
	for len(roots) < limit && !more {
		ts, err := rv.Threads(roomID, before, limit+1, nil)
		if err != nil {
			return err
		}
		if len(ts) == 0 {
			break
		}
		for _, t := range ts {
			before = t.Latest
			root, err := v.Event(t.RootID)
			if err != nil {
				return err
			}
			if !visibleIn(root, roomID, upper, vis) {
				continue
			}
			if participated && headOf(root).Sender != sess.UserID && !slices.Contains(t.Senders, sess.UserID) {
				continue
			}
			if len(roots) == limit {
				more = true
				break
			}
			roots = append(roots, root)
			lastActivity = t.Latest
		}
		if len(ts) <= limit {
			break
		}
	}
	chunk := make([]map[string]any, 0, len(roots))
	for _, e := range roots {
		chunk = append(chunk, s.clientEvent(v, e, sess, true))
	}
	out := map[string]any{"chunk": chunk}
	if more {
		if out["next_batch"], err = s.tokenAt("t", lastActivity-1); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// bundledRelations returns unsigned["m.relations"] for an event (spec:
// "Aggregations of child events"), or nil when nothing relates to it:
// m.thread (latest event, count, whether the reader took part), m.replace
// (the newest valid edit, the full event) and m.reference (the event IDs).
// Annotations are not bundled (spec v1.7). Children sent by users the
// reader ignores are left out of every aggregation (spec: servers must not
// consider them), and so are those sent after the reader left or was
// banned: the newest edit or thread reply would show what they may no
// longer read.
func (s *Server) bundledRelations(v rooms.View, rec *rooms.Event, sess *session) map[string]any {
	if s.relationsH == nil {
		return nil
	}
	rv := s.relationsView()
	if ok, err := rv.HasChildren(rec.RoomID, rec.EventID); err != nil || !ok {
		return nil
	}
	children, err := rv.Children(rec.RoomID, rec.EventID, "")
	if err != nil {
		return nil
	}
	var ignored map[string]bool
	upper := uint64(math.MaxUint64)
	if sess != nil {
		if ignored, err = s.ignoredUsers(sess.UserID); err != nil {
			return nil
		}
		m, err := v.Membership(sess.UserID, rec.RoomID)
		if err != nil {
			return nil
		}
		if m != nil && (m.Membership == "leave" || m.Membership == "ban") {
			upper = m.Offset
		}
	}
	hidden := func(c relations.Child) bool { return ignored[c.Sender] || c.Offset > upper }
	out := map[string]any{}
	orig := headOf(rec)
	var refs []map[string]any
	var edit *rooms.Event
	var editTS int64
	for _, c := range children {
		if hidden(c) {
			continue
		}
		switch c.RelType {
		case "m.reference":
			refs = append(refs, map[string]any{"event_id": c.EventID})
		case "m.replace":
			e, err := v.Event(c.EventID)
			if err != nil || e == nil || e.RoomID != rec.RoomID || e.Rejected != "" || e.SoftFailed || e.Outlier {
				continue
			}
			if !validEdit(orig, headOf(e)) {
				continue
			}
			ts := originTS(e)
			if edit == nil || ts > editTS || (ts == editTS && e.EventID > edit.EventID) {
				edit, editTS = e, ts
			}
		}
	}
	t, err := rv.Thread(rec.RoomID, rec.EventID)
	if err == nil && t != nil && (t.Latest > upper || slices.ContainsFunc(t.Senders, func(u string) bool { return ignored[u] })) {
		t = threadWithout(t, children, hidden)
	}
	if err == nil && t != nil && t.Count > 0 {
		if latest, err := v.Event(t.LatestID); err == nil && latest != nil {
			participated := sess != nil && (orig.Sender == sess.UserID || slices.Contains(t.Senders, sess.UserID))
			out[relations.RelThread] = map[string]any{
				"latest_event":              s.clientEventNoBundle(v, latest, sess),
				"count":                     t.Count,
				"current_user_participated": participated,
			}
		}
	}
	if edit != nil {
		out["m.replace"] = s.clientEventNoBundle(v, edit, sess)
	}
	if len(refs) > 0 {
		out["m.reference"] = map[string]any{"chunk": refs}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// threadWithout is the thread summary t counted again from the root's
// children (in timeline order) without the hidden replies.
func threadWithout(t *relations.Thread, children []relations.Child, hidden func(relations.Child) bool) *relations.Thread {
	out := &relations.Thread{RoomID: t.RoomID, RootID: t.RootID}
	for _, c := range children {
		if c.RelType != relations.RelThread || hidden(c) {
			continue
		}
		out.Count++
		out.Latest, out.LatestID = c.Offset, c.EventID
		if !slices.Contains(out.Senders, c.Sender) {
			out.Senders = append(out.Senders, c.Sender)
		}
	}
	return out
}

func originTS(e *rooms.Event) int64 {
	var p struct {
		TS int64 `json:"origin_server_ts"`
	}
	_ = json.Unmarshal(e.JSON, &p)
	return p.TS
}

// validEdit applies the spec's rules for an m.replace event to count:
// same sender and type as the original, neither a state event, the edit
// carries m.new_content, and the original is not itself an edit.
func validEdit(orig, edit eventHead) bool {
	if orig.Sender != edit.Sender || orig.Type != edit.Type || orig.StateKey != nil || edit.StateKey != nil {
		return false
	}
	var ec struct {
		NewContent map[string]json.RawMessage `json:"m.new_content"`
	}
	if json.Unmarshal(edit.Content, &ec) != nil || ec.NewContent == nil {
		return false
	}
	var oc struct {
		RelatesTo *struct {
			RelType string `json:"rel_type"`
		} `json:"m.relates_to"`
	}
	_ = json.Unmarshal(orig.Content, &oc)
	return oc.RelatesTo == nil || oc.RelatesTo.RelType != "m.replace"
}

// clientEventNoBundle formats an event inside another's bundle: without
// bundles of its own, which could recurse.
func (s *Server) clientEventNoBundle(v rooms.View, rec *rooms.Event, sess *session) map[string]any {
	return s.formatClientEvent(v, rec, sess, true, false)
}
