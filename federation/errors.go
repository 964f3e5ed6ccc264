package federation

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/engram-hs/engram/internal/mxerr"
)

// Error is a Matrix error answer of the federation API.
type Error struct {
	Status int
	Code   string
	Msg    string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Msg) }

// Errorf builds an Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

func errUnrecognized(status int) *Error {
	return Errorf(status, "M_UNRECOGNIZED", "Unrecognized request")
}

func errUnauthorized(format string, args ...any) *Error {
	return Errorf(http.StatusUnauthorized, "M_UNAUTHORIZED", format, args...)
}

// writeError answers with err: an *Error (or the room write path's
// *mxerr.Error) as is, anything else 500
// M_UNKNOWN (the details belong in the log, not in the answer).
func writeError(w http.ResponseWriter, err error) {
	var e *Error
	if me := (*mxerr.Error)(nil); errors.As(err, &me) {
		e = &Error{Status: me.Status, Code: me.Code, Msg: me.Msg}
	} else if !errors.As(err, &e) {
		e = Errorf(http.StatusInternalServerError, "M_UNKNOWN", "Internal error")
	}
	writeJSON(w, e.Status, map[string]string{"errcode": e.Code, "error": e.Msg})
}
