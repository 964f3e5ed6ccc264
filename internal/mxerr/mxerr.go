// Package mxerr is the Matrix error answer shared by the client API, the
// room write path and federation: an HTTP status, an errcode, a
// human-readable message and the extra fields some codes carry. It exists
// so that roomwrite can refuse an event with the right errcode without
// importing api, and so that api and federation answer the same refusal
// the same way.
package mxerr

import (
	"fmt"
	"net/http"
)

// Error is a Matrix error response.
type Error struct {
	Status int
	Code   string
	Msg    string
	Extra  map[string]any // retry_after_ms, soft_logout, ...
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Msg) }

// New is an error with a formatted message.
func New(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// With adds a top-level field to the error's JSON body.
func (e *Error) With(k string, v any) *Error {
	if e.Extra == nil {
		e.Extra = map[string]any{}
	}
	e.Extra[k] = v
	return e
}

// Constructors for the errcodes the spec ties to a status.

func Forbidden(format string, a ...any) *Error {
	return New(http.StatusForbidden, "M_FORBIDDEN", format, a...)
}
func NotFound(format string, a ...any) *Error {
	return New(http.StatusNotFound, "M_NOT_FOUND", format, a...)
}
func BadJSON(format string, a ...any) *Error {
	return New(http.StatusBadRequest, "M_BAD_JSON", format, a...)
}
func InvalidParam(format string, a ...any) *Error {
	return New(http.StatusBadRequest, "M_INVALID_PARAM", format, a...)
}
func MissingParam(format string, a ...any) *Error {
	return New(http.StatusBadRequest, "M_MISSING_PARAM", format, a...)
}
func TooLarge(format string, a ...any) *Error {
	return New(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", format, a...)
}
func UnsupportedRoomVersion(format string, a ...any) *Error {
	return New(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", format, a...)
}
func Unknown(format string, a ...any) *Error {
	return New(http.StatusInternalServerError, "M_UNKNOWN", format, a...)
}
func Unrecognized(status int) *Error {
	return New(status, "M_UNRECOGNIZED", "Unrecognized request")
}

// NotLeader answers a write that reached a node which cannot append now.
func NotLeader() *Error {
	return New(http.StatusServiceUnavailable, "M_UNKNOWN", "This server cannot accept writes right now (no cluster leader); retry shortly")
}
