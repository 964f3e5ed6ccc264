package api

import (
	"net/http"
	"strings"
)

// guestEndpoints are the client-server endpoints a guest account may call
// (spec: guest access module, "Client behaviour"), as method and path
// below /_matrix/client/{v3,r0}, spelled as this server's routes spell
// them. Every other authenticated endpoint answers
// M_GUEST_ACCESS_FORBIDDEN to a guest.
var guestEndpoints = map[string]bool{
	"GET /rooms/{roomId}/state":                           true,
	"GET /rooms/{roomId}/context/{eventId}":               true,
	"GET /rooms/{roomId}/event/{eventId}":                 true,
	"GET /rooms/{roomId}/state/{eventType}":               true,
	"GET /rooms/{roomId}/state/{eventType}/{stateKey...}": true,
	"GET /rooms/{roomId}/messages":                        true,
	"GET /rooms/{roomId}/members":                         true,
	"GET /sync":                                           true,
	"POST /rooms/{roomId}/join":                           true,
	"POST /rooms/{roomId}/leave":                          true,
	"PUT /rooms/{roomId}/send/{eventType}/{txnId}":        true,
	"PUT /rooms/{roomId}/state/{eventType}":               true,
	"PUT /rooms/{roomId}/state/{eventType}/{stateKey...}": true,
	"PUT /sendToDevice/{eventType}/{txnId}":               true,
	"GET /devices":                                        true,
	"GET /devices/{deviceId}":                             true,
	"PUT /devices/{deviceId}":                             true,
	"GET /account/whoami":                                 true,
	"POST /keys/upload":                                   true,
	"POST /keys/query":                                    true,
	"POST /keys/claim":                                    true,
}

// guestAllowed says whether a guest may make request r (matched by the
// mux, so r.Pattern is the route).
func guestAllowed(r *http.Request) bool {
	method, path, _ := strings.Cut(r.Pattern, " ")
	for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
		if rest, ok := strings.CutPrefix(path, prefix); ok {
			if rest == "/profile/{userId}/{field}" && (method == "PUT" || method == "DELETE") {
				// Guests may change only their display name.
				return r.PathValue("field") == "displayname"
			}
			return guestEndpoints[method+" "+rest]
		}
	}
	return false
}

func errGuestForbidden() error {
	return merr(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts may not use this endpoint; register a full account")
}
