package api

import (
	"encoding/json"
	"net/http"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Room tags (spec: modules/tags.md, tags.yaml) are the room account data
// event m.tag, {"tags": {name: {order: n}}}: the tag endpoints edit it
// and /sync shows it as any other room account data.

// maxTagBytes is the spec's limit on a tag name.
const maxTagBytes = 255

func (s *Server) tagRoutes() {
	s.client("GET", "/user/{userId}/rooms/{roomId}/tags", s.authed(s.getTags))
	s.client("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}", s.authed(s.putTag))
	s.client("DELETE", "/user/{userId}/rooms/{roomId}/tags/{tag}", s.authed(s.deleteTag))
}

// roomTags reads the user's m.tag content of a room; tags are kept raw so
// fields other than order survive an edit.
func (s *Server) roomTags(userID, roomID string) (map[string]json.RawMessage, error) {
	tags := map[string]json.RawMessage{}
	rec, err := s.userdataView().AccountData(userID, roomID, "m.tag")
	if err != nil || rec == nil {
		return tags, err
	}
	var c struct {
		Tags map[string]json.RawMessage `json:"tags"`
	}
	if json.Unmarshal(rec.Content, &c) == nil && c.Tags != nil {
		tags = c.Tags
	}
	return tags, nil
}

func (s *Server) getTags(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	if err := ownUser(r, sess); err != nil {
		return err
	}
	tags, err := s.roomTags(sess.UserID, roomID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"tags": tags})
	return nil
}

// editTags changes one tag under a per-user-and-room lock and records the
// whole m.tag content.
func (s *Server) editTags(r *http.Request, sess *session, edit func(tags map[string]json.RawMessage)) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	if err := ownUser(r, sess); err != nil {
		return err
	}
	if len(r.PathValue("tag")) > maxTagBytes {
		return errInvalidParam("A tag name must not exceed %d bytes", maxTagBytes)
	}
	defer s.locks.Lock("tags:" + sess.UserID + "\x00" + roomID)()
	tags, err := s.roomTags(sess.UserID, roomID)
	if err != nil {
		return err
	}
	edit(tags)
	content := mustJSON(map[string]any{"tags": tags})
	_, err = s.commit(r.Context(), []*projections.Handle{s.userdataH}, facts.MustEncode(englog.KindAccountDataSet, facts.AccountDataSet{UserID: sess.UserID, RoomID: roomID, Type: "m.tag", Content: content}))
	return err
}

func (s *Server) putTag(w http.ResponseWriter, r *http.Request, sess *session) error {
	var body map[string]json.RawMessage
	if err := readJSON(r, &body); err != nil {
		return err
	}
	if o, ok := body["order"]; ok {
		var n float64
		if json.Unmarshal(o, &n) != nil {
			return errBadJSON("order must be a number")
		}
	}
	if err := s.editTags(r, sess, func(tags map[string]json.RawMessage) { tags[r.PathValue("tag")] = mustJSON(body) }); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) deleteTag(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := s.editTags(r, sess, func(tags map[string]json.RawMessage) { delete(tags, r.PathValue("tag")) }); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
