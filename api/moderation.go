package api

import (
	"net/http"
	"strings"
)

// What admins decided about users and rooms (api/admin) takes effect
// here, before a handler runs: locked accounts (spec v1.18: 401
// M_USER_LOCKED on everything but logout), suspended accounts (403
// M_USER_SUSPENDED on what would let them act on others), shadow-banned
// accounts (Synapse: their sends and invites answer as if they worked and
// reach nobody), and blocked or purged rooms (no local user joins them).

// routeTail is the request's route pattern after the client API version:
// "PUT /rooms/{roomId}/send/{eventType}/{txnId}"; "" for other routes.
func routeTail(r *http.Request) string {
	ri := reqInfoFrom(r)
	if ri == nil {
		return ""
	}
	method, path, _ := strings.Cut(ri.route, " ")
	for _, p := range []string{"/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/v1"} {
		if rest, ok := strings.CutPrefix(path, p); ok {
			return method + " " + rest
		}
	}
	return ""
}

// lockedAllowed: the endpoints a locked account may still call.
func lockedAllowed(r *http.Request) bool {
	t := routeTail(r)
	return t == "POST /logout" || t == "POST /logout/all"
}

func errUserLocked() *matrixError {
	return merr(http.StatusUnauthorized, "M_USER_LOCKED", "This account has been locked by a server administrator").With("soft_logout", true)
}

// suspendedRefused: what a suspended account may not do (the spec leaves
// the list to the server; it must allow reading, leaving, redacting,
// logging out and deactivating).
var suspendedRefused = map[string]bool{
	"PUT /rooms/{roomId}/send/{eventType}/{txnId}":        true,
	"PUT /rooms/{roomId}/state/{eventType}/{stateKey...}": true,
	"PUT /rooms/{roomId}/state/{eventType}":               true,
	"POST /rooms/{roomId}/invite":                         true,
	"POST /rooms/{roomId}/join":                           true,
	"POST /join/{roomIdOrAlias}":                          true,
	"POST /knock/{roomIdOrAlias}":                         true,
	"POST /createRoom":                                    true,
	"PUT /profile/{userId}/{field}":                       true,
	"PUT /directory/room/{roomAlias}":                     true,
	"PUT /rooms/{roomId}/typing/{userId}":                 true,
	"POST /rooms/{roomId}/upgrade":                        true,
	"POST /rooms/{roomId}/kick":                           true,
	"POST /rooms/{roomId}/ban":                            true,
	"POST /rooms/{roomId}/unban":                          true,
}

// moderate applies the admins' decisions to an authenticated request; it
// reports whether it answered the request itself.
func (s *Server) moderate(w http.ResponseWriter, r *http.Request, sess *session) (bool, error) {
	tail := routeTail(r)
	if sess.Suspended && suspendedRefused[tail] && !(strings.HasPrefix(tail, "PUT /rooms/{roomId}/send/") && r.PathValue("eventType") == "m.room.redaction") {
		return true, merr(http.StatusForbidden, "M_USER_SUSPENDED", "This account has been suspended by a server administrator: it can read and leave rooms, not act in them")
	}
	if sess.ShadowBanned {
		switch {
		case strings.HasPrefix(tail, "PUT /rooms/{roomId}/send/"), strings.HasPrefix(tail, "PUT /rooms/{roomId}/state/"):
			writeJSON(w, http.StatusOK, map[string]string{"event_id": "$" + randomString(32)})
			return true, nil
		case tail == "POST /rooms/{roomId}/invite", strings.HasPrefix(tail, "PUT /rooms/{roomId}/typing/"):
			writeJSON(w, http.StatusOK, struct{}{})
			return true, nil
		}
	}
	roomID := ""
	switch tail {
	case "POST /rooms/{roomId}/join", "POST /rooms/{roomId}/invite":
		roomID = r.PathValue("roomId")
	case "POST /join/{roomIdOrAlias}":
		id, err := s.resolveRoom(r.PathValue("roomIdOrAlias"))
		if err != nil {
			return false, nil // the handler answers the unknown alias
		}
		roomID = id
	}
	if roomID != "" && !sess.Admin {
		st := s.adminState()
		if b, err := st.Blocked(roomID); err != nil {
			return true, err
		} else if b != nil {
			return true, errForbidden("This room has been blocked on this server")
		}
		if gone, err := st.Gone(roomID); err != nil {
			return true, err
		} else if gone {
			return true, errForbidden("This room has been deleted on this server")
		}
	}
	return false, nil
}
