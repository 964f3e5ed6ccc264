// Package apihttp holds what the client-server API package and its
// sub-packages (api/media, ...) share beyond errors (internal/mxerr): the
// caller behind an access token, and the Host a sub-package registers its
// endpoints with. The api package implements Host, so a sub-package's
// endpoints get the same authentication, error format, request log line,
// metrics and 404/405 handling as every other endpoint.
package apihttp

import (
	"context"
	"encoding/json"
	"net/http"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
)

// WriteJSON writes a JSON response.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"errcode":"M_UNKNOWN","error":"response could not be encoded"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// Handler serves a request; a returned error is written as a Matrix error
// (a *mxerr.Error as is, anything else as 500 M_UNKNOWN, logged).
type Handler func(w http.ResponseWriter, r *http.Request) error

// Caller is the user behind a valid access token.
type Caller struct {
	UserID   string
	DeviceID string
	Admin    bool
	Guest    bool
}

// Host is what the api package offers a sub-package.
type Host interface {
	// Handle registers an endpoint (method and a net/http pattern path).
	Handle(method, path string, h Handler)
	// HandleStream registers an endpoint whose request body is not bounded
	// by the JSON body limit: the handler reads it as a stream and bounds
	// it itself (media uploads).
	HandleStream(method, path string, h Handler)
	// Authenticate returns the caller of a request with a valid access
	// token, or the Matrix error to answer (401 M_MISSING_TOKEN, ...).
	Authenticate(r *http.Request) (*Caller, error)
	// RateLimit spends one action of subject under the server's rule of
	// that name (Synapse's key, "rc_media_create"), or returns 429
	// M_LIMIT_EXCEEDED with retry_after_ms; nil when rate limiting is off.
	RateLimit(rule, subject string) error
	// Commit appends proposals and waits until the given projections have
	// applied them (read-your-writes).
	Commit(ctx context.Context, wait []*projections.Handle, props ...englog.Proposal) ([]uint64, error)
	// RoomEventContents returns the content of every event in a room's
	// timeline (the media admin API finds a room's media in them).
	RoomEventContents(ctx context.Context, roomID string) ([]json.RawMessage, error)
	// ReadJSON decodes a JSON object request body.
	ReadJSON(r *http.Request, v any) error
}
