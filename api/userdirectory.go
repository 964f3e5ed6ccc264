package api

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/engram-hs/engram/stateres"
)

// User directory search (spec: users.yaml). As Synapse does by default,
// the searchable users are those who share a joined room with the
// searcher, and those joined to rooms published in the room directory.
// The searcher is not among the results (they look for others; Synapse
// leaves them out too). The candidate set is computed from the rooms projection per request:
// cheap for the room sizes of a small server, and no extra index to keep.

const (
	defaultUserDirectoryLimit = 10
	maxUserDirectoryLimit     = 1000
)

func (s *Server) userDirectoryRoutes() {
	s.client("POST", "/user_directory/search", s.authed(s.searchUserDirectory))
}

type directoryUser struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
	rank        int
}

func (s *Server) searchUserDirectory(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.SearchTerm == nil {
		return errMissingParam("search_term is required")
	}
	limit := defaultUserDirectoryLimit
	if req.Limit != nil {
		limit = min(max(*req.Limit, 0), maxUserDirectoryLimit)
	}
	words := strings.Fields(strings.ToLower(*req.SearchTerm))

	v := s.roomsView()
	roomIDs, err := v.PublicRooms()
	if err != nil {
		return err
	}
	ms, err := v.Memberships(sess.UserID)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Membership == "join" {
			roomIDs = append(roomIDs, m.RoomID)
		}
	}
	slices.Sort(roomIDs)
	roomIDs = slices.Compact(roomIDs)

	// The member events give remote users' names; local users' global
	// profiles win, as they do not vary by room.
	found := map[string]*directoryUser{}
	for _, roomID := range roomIDs {
		evs, err := v.State(roomID, stateres.MRoomMember)
		if err != nil {
			return err
		}
		for _, e := range evs {
			h := headOf(e)
			var c struct {
				Membership  string `json:"membership"`
				DisplayName string `json:"displayname"`
				AvatarURL   string `json:"avatar_url"`
			}
			_ = json.Unmarshal(h.Content, &c)
			if c.Membership != "join" || h.StateKey == nil || found[*h.StateKey] != nil || *h.StateKey == sess.UserID {
				continue
			}
			found[*h.StateKey] = &directoryUser{UserID: *h.StateKey, DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
		}
	}
	av := s.accountsView()
	var results []directoryUser
	for _, u := range found {
		if strings.HasSuffix(u.UserID, ":"+s.cfg.ServerName) {
			acc, err := av.Account(u.UserID)
			if err != nil {
				return err
			}
			if acc == nil || acc.Deactivated {
				continue
			}
			p, err := av.Profile(u.UserID)
			if err != nil {
				return err
			}
			if p.DisplayName != nil {
				u.DisplayName = *p.DisplayName
			}
			if p.AvatarURL != nil {
				u.AvatarURL = *p.AvatarURL
			}
		}
		if rank, ok := directoryMatch(u, words); ok {
			u.rank = rank
			results = append(results, *u)
		}
	}
	// Best matches first, then users with a display name, then by ID so
	// the order is stable.
	slices.SortFunc(results, func(a, b directoryUser) int {
		if c := cmp.Compare(b.rank, a.rank); c != 0 {
			return c
		}
		if c := cmp.Compare(hasName(b), hasName(a)); c != 0 {
			return c
		}
		return cmp.Compare(a.UserID, b.UserID)
	})
	limited := len(results) > limit
	if limited {
		results = results[:limit]
	}
	if results == nil {
		results = []directoryUser{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results, "limited": limited})
	return nil
}

func hasName(u directoryUser) int {
	if u.DisplayName != "" {
		return 1
	}
	return 0
}

// directoryMatch reports whether every search word occurs in the user ID
// or display name, and ranks matches that start a word of either above
// those in the middle of one.
func directoryMatch(u *directoryUser, words []string) (int, bool) {
	id, name := strings.ToLower(u.UserID), strings.ToLower(u.DisplayName)
	localpart := strings.TrimPrefix(id, "@")
	if i := strings.IndexByte(localpart, ':'); i >= 0 {
		localpart = localpart[:i]
	}
	rank := 0
	for _, w := range words {
		if !strings.Contains(id, w) && !strings.Contains(name, w) {
			return 0, false
		}
		prefix := strings.HasPrefix(localpart, w)
		for _, nw := range strings.Fields(name) {
			prefix = prefix || strings.HasPrefix(nw, w)
		}
		if prefix {
			rank++
		}
	}
	return rank, true
}
