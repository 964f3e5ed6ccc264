package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/engram-hs/engram/internal/mxerr"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
)

// matrixError is an error response of the client-server API: an errcode,
// a human-readable message, the HTTP status, and extra fields some codes
// carry (retry_after_ms, soft_logout, ...). It is the type the room write
// path and federation answer with too (internal/mxerr).
type matrixError = mxerr.Error

// Short names for the constructors handlers use most.
var (
	merr            = mxerr.New
	errForbidden    = mxerr.Forbidden
	errNotFound     = mxerr.NotFound
	errBadJSON      = mxerr.BadJSON
	errInvalidParam = mxerr.InvalidParam
	errMissingParam = mxerr.MissingParam
	errUnknown      = mxerr.Unknown
	errUnrecognized = mxerr.Unrecognized
)

// errDiskFull answers writes while the server's disk is below its reserve
// (see README "Full disks"): reads keep working.
func errDiskFull() *matrixError {
	return merr(http.StatusInsufficientStorage, "M_UNKNOWN", "The server is out of disk space: writes are paused until its administrator frees space; reads still work")
}

// writeJSON writes a JSON response. Every response carries the CORS
// headers (set by the middleware before the handler runs).
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"errcode":"M_UNKNOWN","error":"response could not be encoded"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeError answers with err: a *matrixError as is, anything else as a
// 500 M_UNKNOWN whose details go to the log, not the client.
// statusClientClosedRequest is the non-standard status for a request the
// client abandoned.
const statusClientClosedRequest = 499

func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var me *matrixError // api's, its sub-packages' (admin, media, ...) and roomwrite's
	var healing *projections.HealingError
	switch {
	case errors.As(err, &me):
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client hung up; nothing went wrong here and nobody reads the
		// answer. 499 is the status proxies use for it, so the request
		// line says what happened. Entries already proposed may still
		// commit, as the client's retry with the same txnId will see.
		zerolog.Ctx(r.Context()).Debug().Err(err).Msg("client closed the request")
		me = &matrixError{Status: statusClientClosedRequest, Code: "M_UNKNOWN", Msg: "Client closed the request"}
	case errors.Is(err, englog.ErrDiskFull):
		// The log said what to free, once; each refused write is a debug
		// line. 507 tells clients and proxies the server, not the request,
		// is at fault, and that a retry later may work.
		zerolog.Ctx(r.Context()).Debug().Err(err).Msg("write refused: disk full")
		me = errDiskFull()
	case errors.As(err, &healing):
		// The projection said so once, naming the damaged file; each
		// request it turns away is a debug line. 503 with Retry-After:
		// the data is not lost (the log holds it), only not readable
		// until the rebuild finishes.
		zerolog.Ctx(r.Context()).Debug().Err(err).Msg("projection healing")
		ms := healing.RetryAfter.Milliseconds()
		me = merr(http.StatusServiceUnavailable, "M_UNKNOWN", "Part of the server's data was found damaged and is being rebuilt from its log; retry shortly").With("retry_after_ms", ms)
	default:
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("internal error answering request")
		me = errUnknown("Internal server error")
	}
	body := map[string]any{}
	if me.Code != "" { // a UIA challenge carries no errcode until a stage fails
		body["errcode"], body["error"] = me.Code, me.Msg
	}
	for k, v := range me.Extra {
		body[k] = v
	}
	if ri := reqInfoFrom(r); ri != nil {
		ri.errcode = me.Code
	}
	if ms, ok := me.Extra["retry_after_ms"].(int64); ok && (me.Status == http.StatusTooManyRequests || me.Status == http.StatusServiceUnavailable) {
		// RFC 9110: whole seconds, rounded up so a client never comes back early.
		w.Header().Set("Retry-After", strconv.FormatInt((ms+999)/1000, 10))
	}
	writeJSON(w, me.Status, body)
}
