package api

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// GET /_matrix/client/v1/mutual_rooms (spec v1.19): the rooms the caller
// and another user are both joined to, in room ID order, in pages.

func (s *Server) mutualRoomsRoutes() {
	s.handle("GET", "/_matrix/client/v1/mutual_rooms", s.authed(s.mutualRooms))
}

const mutualRoomsPage = 100

func (s *Server) mutualRooms(w http.ResponseWriter, r *http.Request, sess *session) error {
	q := r.URL.Query()
	other := q.Get("user_id")
	if other == "" {
		return errInvalidParam("user_id is required")
	}
	if !strings.HasPrefix(other, "@") || !strings.Contains(other, ":") || len(other) > 255 {
		return errInvalidParam("The user ID provided was invalid")
	}
	if other == sess.UserID {
		return errInvalidParam("user_id is your own user ID")
	}
	from := 0
	if t := q.Get("from"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return errInvalidParam("from is not a token this server gave")
		}
		from = n
	}
	mine, err := s.joinedRoomIDs(sess.UserID)
	if err != nil {
		return err
	}
	theirs, err := s.joinedRoomIDs(other)
	if err != nil {
		return err
	}
	shared := []string{}
	for _, room := range mine {
		if slices.Contains(theirs, room) {
			shared = append(shared, room)
		}
	}
	slices.Sort(shared)
	out := map[string]any{"count": len(shared)}
	page := shared[min(from, len(shared)):]
	if len(page) > mutualRoomsPage {
		page = page[:mutualRoomsPage]
		out["next_batch"] = strconv.Itoa(from + mutualRoomsPage)
	}
	out["joined"] = page
	writeJSON(w, http.StatusOK, out)
	return nil
}
