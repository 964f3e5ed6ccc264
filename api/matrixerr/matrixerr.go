// Package matrixerr is the error answer of the client-server and admin
// APIs for the sub-packages of api (admin, media, ...): a handler returns
// an *Error and api writes it as {"errcode", "error", extra fields...}
// with its HTTP status, exactly as its own errors.
package matrixerr

import (
	"fmt"
	"net/http"
)

// Error is a Matrix error response: the HTTP status, an errcode, a
// human-readable message, and the extra fields some codes carry
// (retry_after_ms, soft_logout, ...). Its layout is api's own error's:
// api converts one into the other.
type Error struct {
	Status int
	Code   string
	Msg    string
	Extra  map[string]any
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Msg) }

// New builds an error with a formatted message.
func New(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// With adds an extra field to the answer.
func (e *Error) With(k string, v any) *Error {
	if e.Extra == nil {
		e.Extra = map[string]any{}
	}
	e.Extra[k] = v
	return e
}

// The errcodes the spec ties to a status.

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
