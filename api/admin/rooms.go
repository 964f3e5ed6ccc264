package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/adminstate"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

func (a *API) roomEndpoints() []endpoint {
	return []endpoint{
		{"GET", "/v1/rooms", a.listRooms},
		{"GET", "/v1/rooms/{roomId}", a.roomDetails},
		{"GET", "/v1/rooms/{roomId}/members", a.roomMembers},
		{"GET", "/v1/rooms/{roomId}/state", a.roomState},
		{"DELETE", "/v1/rooms/{roomId}", a.deleteRoomV1},
		{"DELETE", "/v2/rooms/{roomId}", a.deleteRoomV2},
		// /v2/rooms/{roomId}/delete_status and /v2/rooms/delete_status/{deleteId}
		// overlap as patterns: one route tells them apart.
		{"GET", "/v2/rooms/{roomId}/{what}", a.deleteStatuses},
		{"POST", "/v1/purge_history/{roomId}", a.purgeHistory},
		{"POST", "/v1/purge_history/{roomId}/{eventId}", a.purgeHistory},
		{"GET", "/v1/purge_history_status/{purgeId}", a.purgeStatus},
		{"GET", "/v1/rooms/{roomId}/block", a.getBlock},
		{"PUT", "/v1/rooms/{roomId}/block", a.putBlock},
		{"POST", "/v1/rooms/{roomId}/make_room_admin", a.makeRoomAdmin},
		{"GET", "/v1/rooms/{roomId}/forward_extremities", a.forwardExtremities},
		{"DELETE", "/v1/rooms/{roomId}/forward_extremities", a.dropForwardExtremities},
	}
}

// stateContent decodes the content of a current state event into v;
// false when there is none.
func stateContent(rv rooms.View, roomID, typ, stateKey string, v any) (bool, error) {
	ev, err := rv.StateEvent(roomID, typ, stateKey)
	if err != nil || ev == nil {
		return false, err
	}
	pdu, err := ev.PDU()
	if err != nil {
		return false, err
	}
	return json.Unmarshal(pdu.Content(), v) == nil, nil
}

// roomJSON is a room in Synapse's room list shape; details adds the
// fields of "Room Details".
func (a *API) roomJSON(rv rooms.View, room *rooms.Room, details bool) (map[string]any, error) {
	id := room.RoomID
	out := map[string]any{"room_id": id, "version": room.Version, "creator": room.Creator,
		"name": nil, "canonical_alias": nil, "encryption": nil, "join_rules": nil, "guest_access": nil,
		"history_visibility": nil, "room_type": nil, "federatable": true}
	var name struct {
		Name string `json:"name"`
	}
	if ok, err := stateContent(rv, id, "m.room.name", "", &name); err != nil {
		return nil, err
	} else if ok && name.Name != "" {
		out["name"] = name.Name
	}
	var alias struct {
		Alias string `json:"alias"`
	}
	if ok, err := stateContent(rv, id, "m.room.canonical_alias", "", &alias); err != nil {
		return nil, err
	} else if ok && alias.Alias != "" {
		out["canonical_alias"] = alias.Alias
	}
	var enc struct {
		Algorithm string `json:"algorithm"`
	}
	if ok, err := stateContent(rv, id, "m.room.encryption", "", &enc); err != nil {
		return nil, err
	} else if ok {
		out["encryption"] = enc.Algorithm
	}
	var jr struct {
		JoinRule string `json:"join_rule"`
	}
	if ok, err := stateContent(rv, id, stateres.MRoomJoinRules, "", &jr); err != nil {
		return nil, err
	} else if ok {
		out["join_rules"] = jr.JoinRule
	}
	var ga struct {
		GuestAccess string `json:"guest_access"`
	}
	if ok, err := stateContent(rv, id, "m.room.guest_access", "", &ga); err != nil {
		return nil, err
	} else if ok {
		out["guest_access"] = ga.GuestAccess
	}
	var hv struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	if ok, err := stateContent(rv, id, stateres.MRoomHistoryVisibility, "", &hv); err != nil {
		return nil, err
	} else if ok {
		out["history_visibility"] = hv.HistoryVisibility
	}
	var create struct {
		Type      string `json:"type"`
		Federate  *bool  `json:"m.federate"`
		CreatorV1 string `json:"creator"`
	}
	if ok, err := stateContent(rv, id, stateres.MRoomCreate, "", &create); err != nil {
		return nil, err
	} else if ok {
		if create.Type != "" {
			out["room_type"] = create.Type
		}
		if create.Federate != nil {
			out["federatable"] = *create.Federate
		}
	}
	joined, err := rv.MemberIDs(id, "join")
	if err != nil {
		return nil, err
	}
	local := 0
	for _, u := range joined {
		if a.isLocal(u) {
			local++
		}
	}
	out["joined_members"], out["joined_local_members"] = len(joined), local
	pub, err := rv.Public(id)
	if err != nil {
		return nil, err
	}
	out["public"] = pub
	state, err := rv.State(id, "")
	if err != nil {
		return nil, err
	}
	out["state_events"] = len(state)
	if details {
		var topic struct {
			Topic string `json:"topic"`
		}
		out["topic"], out["avatar"] = nil, nil
		if ok, err := stateContent(rv, id, "m.room.topic", "", &topic); err != nil {
			return nil, err
		} else if ok && topic.Topic != "" {
			out["topic"] = topic.Topic
		}
		var avatar struct {
			URL string `json:"url"`
		}
		if ok, err := stateContent(rv, id, "m.room.avatar", "", &avatar); err != nil {
			return nil, err
		} else if ok && avatar.URL != "" {
			out["avatar"] = avatar.URL
		}
		devices := 0
		for _, u := range joined {
			if a.isLocal(u) {
				ds, err := a.host.Accounts().Devices(u)
				if err != nil {
					return nil, err
				}
				devices += len(ds)
			}
		}
		out["joined_local_devices"] = devices
		out["forgotten"] = false
	}
	return out, nil
}

// room finds the path's room; purged rooms are gone.
func (a *API) room(r *http.Request) (*rooms.Room, error) {
	id := r.PathValue("roomId")
	if !strings.HasPrefix(id, "!") {
		return nil, mxerr.InvalidParam("%s is not a room ID", id)
	}
	room, err := a.host.Rooms().Room(id)
	if err != nil {
		return nil, err
	}
	if room == nil {
		return nil, mxerr.NotFound("Room not found")
	}
	return room, nil
}

var roomOrders = map[string]string{
	"alphabetical": "name", "size": "joined_members", "name": "name", "canonical_alias": "canonical_alias",
	"joined_members": "joined_members", "joined_local_members": "joined_local_members", "version": "version",
	"creator": "creator", "encryption": "encryption", "federatable": "federatable", "public": "public",
	"join_rules": "join_rules", "guest_access": "guest_access", "history_visibility": "history_visibility",
	"state_events": "state_events",
}

// listRooms is GET /v1/rooms: Synapse's "List Room", with search_term
// and order_by.
func (a *API) listRooms(w http.ResponseWriter, r *http.Request, c Caller) error {
	from, err := queryInt(r, "from", 0)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	orderBy := q.Get("order_by")
	if orderBy == "" {
		orderBy = "name"
	}
	field, ok := roomOrders[orderBy]
	if !ok {
		return mxerr.InvalidParam("Unknown value for order_by: %s", orderBy)
	}
	dir := q.Get("dir")
	if dir != "" && dir != "f" && dir != "b" {
		return mxerr.InvalidParam("Unknown direction: %s", dir)
	}
	publicOnly, err := queryBool(r, "public_rooms")
	if err != nil {
		return err
	}
	emptyRooms, err := queryBool(r, "empty_rooms")
	if err != nil {
		return err
	}
	search := strings.ToLower(q.Get("search_term"))
	rv, st := a.host.Rooms(), a.host.State()
	ids, err := rv.RoomIDs()
	if err != nil {
		return err
	}
	var list []map[string]any
	for _, id := range ids {
		if gone, err := st.Gone(id); err != nil {
			return err
		} else if gone {
			continue
		}
		room, err := rv.Room(id)
		if err != nil {
			return err
		}
		if room == nil {
			continue
		}
		m, err := a.roomJSON(rv, room, false)
		if err != nil {
			return err
		}
		if search != "" {
			n, _ := m["name"].(string)
			al, _ := m["canonical_alias"].(string)
			if !strings.Contains(strings.ToLower(n), search) && !strings.Contains(strings.ToLower(al), search) && !strings.Contains(strings.ToLower(id), search) {
				continue
			}
		}
		if publicOnly != nil && m["public"] != *publicOnly {
			continue
		}
		if emptyRooms != nil && (m["joined_local_members"] == 0) != *emptyRooms {
			continue
		}
		list = append(list, m)
	}
	// Sizes sort largest first, names A to Z (Synapse's defaults); dir=b
	// reverses either.
	numeric := field == "joined_members" || field == "joined_local_members" || field == "state_events"
	sort.SliceStable(list, func(i, j int) bool {
		less, equal := compareField(list[i][field], list[j][field])
		if equal {
			return list[i]["room_id"].(string) < list[j]["room_id"].(string)
		}
		if numeric {
			return !less
		}
		return less
	})
	if dir == "b" {
		for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
			list[i], list[j] = list[j], list[i]
		}
	}
	total := len(list)
	page := []map[string]any{}
	if from < total {
		page = list[from:min(total, from+limit)]
	}
	out := map[string]any{"rooms": page, "offset": from, "total_rooms": total}
	if from+limit < total {
		out["next_batch"] = from + limit
	}
	if from > 0 {
		out["prev_batch"] = max(0, from-limit)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) roomDetails(w http.ResponseWriter, r *http.Request, c Caller) error {
	room, err := a.room(r)
	if err != nil {
		return err
	}
	m, err := a.roomJSON(a.host.Rooms(), room, true)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}

func (a *API) roomMembers(w http.ResponseWriter, r *http.Request, c Caller) error {
	room, err := a.room(r)
	if err != nil {
		return err
	}
	members, err := a.host.Rooms().MemberIDs(room.RoomID, "join")
	if err != nil {
		return err
	}
	if members == nil {
		members = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"members": members, "total": len(members)})
	return nil
}

func (a *API) roomState(w http.ResponseWriter, r *http.Request, c Caller) error {
	room, err := a.room(r)
	if err != nil {
		return err
	}
	evs, err := a.host.Rooms().State(room.RoomID, "")
	if err != nil {
		return err
	}
	out := []json.RawMessage{}
	for _, ev := range evs {
		out = append(out, json.RawMessage(ev.JSON))
	}
	writeJSON(w, http.StatusOK, map[string]any{"state": out})
	return nil
}

// deleteRequest is the body of both room deletion APIs.
type deleteRequest struct {
	NewRoomUserID string `json:"new_room_user_id"`
	RoomName      string `json:"room_name"`
	Message       string `json:"message"`
	Block         bool   `json:"block"`
	Purge         *bool  `json:"purge"`
	ForcePurge    bool   `json:"force_purge"`
}

// deleteRoomV1 is Synapse's synchronous DELETE /v1/rooms/{roomId}
// (what synadm calls); it answers with the outcome.
func (a *API) deleteRoomV1(w http.ResponseWriter, r *http.Request, c Caller) error {
	d, err := a.deleteRoom(r, c)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, shutdownJSON(d))
	return nil
}

// deleteRoomV2 is DELETE /v2/rooms/{roomId}: it answers with a delete_id
// whose status the status endpoints report. Engram finishes the deletion
// before answering, so the status is already final.
func (a *API) deleteRoomV2(w http.ResponseWriter, r *http.Request, c Caller) error {
	d, err := a.deleteRoom(r, c)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"delete_id": d.DeleteID})
	return nil
}

func shutdownJSON(d *facts.RoomDeleted) map[string]any {
	nz := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	var newRoom any
	if d.NewRoomID != "" {
		newRoom = d.NewRoomID
	}
	return map[string]any{"kicked_users": nz(d.KickedUsers), "failed_to_kick_users": nz(d.FailedToKick),
		"local_aliases": nz(d.LocalAliases), "new_room_id": newRoom}
}

func statusJSON(d *facts.RoomDeleted) map[string]any {
	out := map[string]any{"delete_id": d.DeleteID, "status": d.Status, "shutdown_room": shutdownJSON(d)}
	if d.Error != "" {
		out["error"] = d.Error
	}
	return out
}

// deleteRoom shuts a room down, as Synapse does: every local member leaves
// (through the room write path), into a new room of new_room_user_id's
// when given; the room's local aliases are removed and it leaves the
// directory; it is blocked when asked, and with purge it is no longer
// listed and its events are erased from the log, every projection and
// the disk (erase.go).
func (a *API) deleteRoom(r *http.Request, c Caller) (*facts.RoomDeleted, error) {
	var req deleteRequest
	if err := readJSON(r, &req); err != nil {
		return nil, err
	}
	room, err := a.room(r)
	if err != nil {
		return nil, err
	}
	id := room.RoomID
	ctx := r.Context()
	purge := req.Purge == nil || *req.Purge
	d := &facts.RoomDeleted{RoomID: id, DeleteID: randomID(), Purge: purge, StartedAt: a.now().UnixMilli()}
	if req.NewRoomUserID != "" {
		acc, err := a.localUser(req.NewRoomUserID)
		if err != nil {
			return nil, err
		}
		if acc.Deactivated {
			return nil, mxerr.InvalidParam("new_room_user_id %s is deactivated", req.NewRoomUserID)
		}
		name := req.RoomName
		if name == "" {
			name = "Content Violation Notification"
		}
		msg := req.Message
		if msg == "" {
			msg = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked."
		}
		ed := 20 // members may not talk in the notification room
		newRoom, err := a.host.CreateRoom(ctx, CreateRoom{Creator: req.NewRoomUserID, Name: name, Preset: "private_chat", EventsDefault: &ed})
		if err != nil {
			return nil, err
		}
		d.NewRoomID = newRoom
		if _, err := a.host.SendEvent(ctx, stateres.ProtoEvent{RoomID: newRoom, Type: "m.room.message", Sender: req.NewRoomUserID,
			Content: mustJSON(map[string]string{"msgtype": "m.text", "body": msg})}, nil); err != nil {
			return nil, err
		}
	}
	rv := a.host.Rooms()
	members, err := rv.MemberIDs(id, "join", "invite", "knock")
	if err != nil {
		return nil, err
	}
	leaves := map[uint64]bool{} // kept by a purge
	for _, u := range members {
		if !a.isLocal(u) {
			continue
		}
		leaveID, err := a.host.SendEvent(ctx, stateres.ProtoEvent{RoomID: id, Type: stateres.MRoomMember, StateKey: &u, Sender: u,
			Content: mustJSON(map[string]string{"membership": "leave"})}, nil)
		if err != nil {
			d.FailedToKick = append(d.FailedToKick, u)
			continue
		}
		if ev, err := rv.Event(leaveID); err != nil {
			return nil, err
		} else if ev != nil {
			leaves[ev.Offset] = true
		}
		d.KickedUsers = append(d.KickedUsers, u)
		if d.NewRoomID != "" {
			if err := a.moveInto(r, req.NewRoomUserID, d.NewRoomID, u); err != nil {
				d.Error = "could not move " + u + " into the new room: " + err.Error()
			}
		}
	}
	var props []englog.Proposal
	aliases, err := rv.Aliases(id)
	if err != nil {
		return nil, err
	}
	for _, al := range aliases {
		props = append(props, facts.MustEncode(englog.KindAliasRemoved, facts.AliasRemoved{Alias: al}))
		d.LocalAliases = append(d.LocalAliases, al)
	}
	if pub, err := rv.Public(id); err != nil {
		return nil, err
	} else if pub {
		props = append(props, facts.MustEncode(englog.KindRoomVisibilitySet, facts.RoomVisibilitySet{RoomID: id, Visibility: "private"}))
	}
	if req.Block {
		props = append(props, facts.MustEncode(englog.KindRoomBlocked, facts.RoomBlocked{RoomID: id, Blocked: true, By: c.UserID}))
	}
	d.Status = adminstate.StatusComplete
	if len(d.FailedToKick) > 0 && !req.ForcePurge {
		// Synapse does not purge a room some local user is still in.
		d.Purge = false
	}
	props = append(props, facts.MustEncode(englog.KindRoomDeleted, *d))
	changes := map[string]any{"block": req.Block, "purge": d.Purge, "kicked_users": d.KickedUsers, "new_room_id": d.NewRoomID}
	if d.Purge {
		// After the deletion fact, which hides the room while the
		// projections are folded again without it.
		erase, n, err := a.purgeRoomEntries(id, d.DeleteID, leaves)
		if err != nil {
			return nil, err
		}
		if n > 0 { // an erasure costs every projection a replay
			props = append(props, erase)
		}
		changes["erased_entries"] = n
	}
	if err := a.commit(ctx, c, "delete_room", id, changes, props...); err != nil {
		return nil, err
	}
	return d, nil
}

// moveInto invites a user into the replacement room and joins them.
func (a *API) moveInto(r *http.Request, inviter, roomID, userID string) error {
	if userID == inviter {
		return nil
	}
	if _, err := a.host.SendEvent(r.Context(), stateres.ProtoEvent{RoomID: roomID, Type: stateres.MRoomMember, StateKey: &userID, Sender: inviter,
		Content: mustJSON(map[string]string{"membership": "invite"})}, nil); err != nil {
		return err
	}
	_, err := a.host.SendEvent(r.Context(), stateres.ProtoEvent{RoomID: roomID, Type: stateres.MRoomMember, StateKey: &userID, Sender: userID,
		Content: mustJSON(map[string]string{"membership": "join"})}, nil)
	return err
}

func (a *API) deleteStatuses(w http.ResponseWriter, r *http.Request, c Caller) error {
	switch {
	case r.PathValue("roomId") == "delete_status":
		return a.deleteStatus(w, r.PathValue("what"))
	case r.PathValue("what") == "delete_status":
		return a.roomDeleteStatus(w, r.PathValue("roomId"))
	}
	return mxerr.New(http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
}

func (a *API) roomDeleteStatus(w http.ResponseWriter, roomID string) error {
	ds, err := a.host.State().RoomDeletions(roomID)
	if err != nil {
		return err
	}
	if len(ds) == 0 {
		return mxerr.NotFound("No delete task for room_id '%s' found", roomID)
	}
	results := []map[string]any{}
	for i := range ds {
		results = append(results, statusJSON(&ds[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
	return nil
}

func (a *API) deleteStatus(w http.ResponseWriter, deleteID string) error {
	d, err := a.host.State().Deletion(deleteID)
	if err != nil {
		return err
	}
	if d == nil {
		return mxerr.NotFound("delete id '%s' not found", deleteID)
	}
	out := statusJSON(d)
	delete(out, "delete_id")
	writeJSON(w, http.StatusOK, out)
	return nil
}

// purgeHistory is POST /v1/purge_history/{roomId}[/{eventId}]: clients no
// longer get the room's non-state events before the given event (or
// timestamp) from /messages, and those events are erased from the log,
// every projection and the disk (erase.go), except redactions and, unless
// delete_local_events, local users' events, as in Synapse.
func (a *API) purgeHistory(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		DeleteLocalEvents bool   `json:"delete_local_events"`
		PurgeUpToEventID  string `json:"purge_up_to_event_id"`
		PurgeUpToTS       *int64 `json:"purge_up_to_ts"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	room, err := a.room(r)
	if err != nil {
		return err
	}
	eventID := r.PathValue("eventId")
	if eventID == "" {
		eventID = req.PurgeUpToEventID
	}
	rv := a.host.Rooms()
	var upTo uint64
	switch {
	case eventID != "":
		ev, err := rv.Event(eventID)
		if err != nil {
			return err
		}
		if ev == nil || ev.RoomID != room.RoomID {
			return mxerr.NotFound("Event %s not found in room %s", eventID, room.RoomID)
		}
		upTo = ev.Offset - 1 // the event itself stays
	case req.PurgeUpToTS != nil:
		if upTo, err = a.offsetBefore(rv, room.RoomID, *req.PurgeUpToTS); err != nil {
			return err
		}
	default:
		return mxerr.MissingParam("must specify purge_up_to_event_id or purge_up_to_ts")
	}
	f := facts.HistoryPurged{RoomID: room.RoomID, PurgeID: randomID(), UpTo: upTo}
	// After the purge fact, which hides the events while the projections
	// are folded again without them.
	erase, n, err := a.purgeHistoryEntries(room.RoomID, f.PurgeID, upTo, req.DeleteLocalEvents)
	if err != nil {
		return err
	}
	changes := map[string]any{"up_to_offset": upTo, "event_id": eventID, "purge_up_to_ts": req.PurgeUpToTS,
		"delete_local_events": req.DeleteLocalEvents, "erased_entries": n}
	props := []englog.Proposal{facts.MustEncode(englog.KindHistoryPurged, f)}
	if n > 0 { // an erasure costs every projection a replay
		props = append(props, erase)
	}
	if err := a.commit(r.Context(), c, "purge_history", room.RoomID, changes, props...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"purge_id": f.PurgeID})
	return nil
}

// offsetBefore is the offset of the newest timeline event of the room
// sent before ts (0 when none).
func (a *API) offsetBefore(rv rooms.View, roomID string, ts int64) (uint64, error) {
	var last uint64
	from := uint64(0)
	for {
		page, err := rv.Timeline(roomID, from, true, 500, 0)
		if err != nil {
			return 0, err
		}
		for _, te := range page {
			ev, err := rv.Event(te.EventID)
			if err != nil {
				return 0, err
			}
			if ev == nil {
				continue
			}
			pdu, err := ev.PDU()
			if err != nil {
				return 0, err
			}
			if pdu.OriginServerTS() >= ts {
				return last, nil
			}
			last = te.Offset
		}
		if len(page) < 500 {
			return last, nil
		}
		from = page[len(page)-1].Offset
	}
}

func (a *API) purgeStatus(w http.ResponseWriter, r *http.Request, c Caller) error {
	p, err := a.host.State().Purge(r.PathValue("purgeId"))
	if err != nil {
		return err
	}
	if p == nil {
		return mxerr.NotFound("purge id '%s' not found", r.PathValue("purgeId"))
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": adminstate.StatusComplete})
	return nil
}

func (a *API) getBlock(w http.ResponseWriter, r *http.Request, c Caller) error {
	id := r.PathValue("roomId")
	b, err := a.host.State().Blocked(id)
	if err != nil {
		return err
	}
	if b == nil {
		writeJSON(w, http.StatusOK, map[string]any{"block": false})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{"block": true, "user_id": b.By})
	return nil
}

func (a *API) putBlock(w http.ResponseWriter, r *http.Request, c Caller) error {
	id := r.PathValue("roomId")
	if !strings.HasPrefix(id, "!") {
		return mxerr.InvalidParam("%s is not a room ID", id)
	}
	var req struct {
		Block *bool `json:"block"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Block == nil {
		return mxerr.MissingParam("Missing 'block' key in body")
	}
	// Like Synapse, a room this server does not know can be blocked too.
	if err := a.commit(r.Context(), c, "block_room", id, map[string]any{"block": *req.Block},
		facts.MustEncode(englog.KindRoomBlocked, facts.RoomBlocked{RoomID: id, Blocked: *req.Block, By: c.UserID})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]bool{"block": *req.Block})
	return nil
}

// makeRoomAdmin grants user_id (default: the caller) the highest power
// level a local member of the room has, sent by that member through the
// room write path; a user who is not in a room that is not public is
// invited.
func (a *API) makeRoomAdmin(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		UserID string `json:"user_id"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	room, err := a.room(r)
	if err != nil {
		return err
	}
	target := req.UserID
	if target == "" {
		target = c.UserID
	}
	if !a.isLocal(target) {
		return mxerr.InvalidParam("This endpoint can only be used with local users")
	}
	if acc, err := a.host.Accounts().Account(target); err != nil {
		return err
	} else if acc == nil {
		return mxerr.NotFound("User not found")
	}
	rv := a.host.Rooms()
	ver, _ := stateres.Version(room.Version)
	var create struct {
		AdditionalCreators []string `json:"additional_creators"`
	}
	if _, err := stateContent(rv, room.RoomID, stateres.MRoomCreate, "", &create); err != nil {
		return err
	}
	creators := map[string]bool{}
	if ver != nil && ver.PrivilegedCreators {
		creators[room.Creator] = true
		for _, u := range create.AdditionalCreators {
			creators[u] = true
		}
	}
	var pl map[string]json.RawMessage
	if _, err := stateContent(rv, room.RoomID, stateres.MRoomPowerLevels, "", &pl); err != nil {
		return err
	}
	users := map[string]int64{}
	if raw, ok := pl["users"]; ok {
		var m map[string]json.Number
		if err := json.Unmarshal(raw, &m); err == nil {
			for u, n := range m {
				users[u], _ = strconv.ParseInt(string(n), 10, 64)
			}
		}
	}
	joined, err := rv.MemberIDs(room.RoomID, "join")
	if err != nil {
		return err
	}
	// The local member with the most power acts; a privileged creator
	// (room versions 12 and later) outranks every level.
	actor, best, actorIsCreator := "", int64(-1<<62), false
	for _, u := range joined {
		if !a.isLocal(u) {
			continue
		}
		if creators[u] {
			if !actorIsCreator {
				actor, actorIsCreator = u, true
			}
			continue
		}
		if lvl := users[u]; !actorIsCreator && lvl > best {
			actor, best = u, lvl
		}
	}
	if actor == "" {
		return mxerr.InvalidParam("No local admin user in room")
	}
	level := best
	if actorIsCreator {
		level = 100
		for _, l := range users {
			level = max(level, l)
		}
	}
	if !creators[target] && users[target] < level {
		users[target] = level
		pl["users"] = mustJSON(users)
		if _, err := a.host.SendEvent(r.Context(), stateres.ProtoEvent{RoomID: room.RoomID, Type: stateres.MRoomPowerLevels, StateKey: new(string), Sender: actor, Content: mustJSON(pl)}, nil); err != nil {
			return err
		}
	}
	m, err := rv.Membership(target, room.RoomID)
	if err != nil {
		return err
	}
	if m == nil || m.Membership != "join" {
		var jr struct {
			JoinRule string `json:"join_rule"`
		}
		if _, err := stateContent(rv, room.RoomID, stateres.MRoomJoinRules, "", &jr); err != nil {
			return err
		}
		if jr.JoinRule != "public" && (m == nil || m.Membership != "invite") {
			if _, err := a.host.SendEvent(r.Context(), stateres.ProtoEvent{RoomID: room.RoomID, Type: stateres.MRoomMember, StateKey: &target, Sender: actor,
				Content: mustJSON(map[string]string{"membership": "invite"})}, nil); err != nil {
				return err
			}
		}
	}
	if err := a.commit(r.Context(), c, "make_room_admin", room.RoomID, map[string]any{"user_id": target, "power_level": level, "granted_by": actor}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) forwardExtremities(w http.ResponseWriter, r *http.Request, c Caller) error {
	room, err := a.room(r)
	if err != nil {
		return err
	}
	rv := a.host.Rooms()
	results := []map[string]any{}
	for _, id := range room.Extremities {
		ev, err := rv.Event(id)
		if err != nil {
			return err
		}
		res := map[string]any{"event_id": id, "state_group": nil, "depth": nil, "received_ts": nil}
		if ev != nil {
			if pdu, err := ev.PDU(); err == nil {
				res["depth"], res["received_ts"] = pdu.Depth(), pdu.OriginServerTS()
			}
		}
		results = append(results, res)
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(results), "results": results})
	return nil
}

// dropForwardExtremities is DELETE /v1/rooms/{roomId}/forward_extremities:
// every forward extremity but the newest (by log position) is dropped, so
// the next event of a room whose DAG fanned out references one event.
// Synapse's answer: {"deleted": n}.
func (a *API) dropForwardExtremities(w http.ResponseWriter, r *http.Request, c Caller) error {
	room, err := a.room(r)
	if err != nil {
		return err
	}
	rv := a.host.Rooms()
	var newest string
	var newestOff uint64
	for _, id := range room.Extremities {
		ev, err := rv.Event(id)
		if err != nil {
			return err
		}
		if ev != nil && ev.Offset >= newestOff {
			newest, newestOff = id, ev.Offset
		}
	}
	drop := []string{}
	for _, id := range room.Extremities {
		if newest != "" && id != newest {
			drop = append(drop, id)
		}
	}
	if len(drop) > 0 {
		f := facts.ExtremitiesDropped{RoomID: room.RoomID, Drop: drop}
		if err := a.commit(r.Context(), c, "drop_forward_extremities", room.RoomID, map[string]any{"dropped": drop, "kept": newest},
			facts.MustEncode(englog.KindExtremitiesDropped, f)); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted": len(drop)})
	return nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(errors.New("admin: marshal: " + err.Error()))
	}
	return b
}
