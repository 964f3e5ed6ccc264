package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
)

// reqInfo collects what the request log line reports; handlers fill in
// the user and room as they learn them.
type reqInfo struct {
	id      string
	route   string
	user    string
	room    string
	errcode string
	ip      string // the client's address (through trusted proxies: ratelimits.go)
}

type reqInfoKey struct{}

func reqInfoFrom(r *http.Request) *reqInfo {
	ri, _ := r.Context().Value(reqInfoKey{}).(*reqInfo)
	return ri
}

func setRoom(r *http.Request, roomID string) {
	if ri := reqInfoFrom(r); ri != nil {
		ri.room = roomID
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// middleware wraps every request: CORS, OPTIONS, request id, body limit,
// rate limiting, one log line and the latency histogram.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := w.Header()
		// Spec: "Web Browser Clients" — these headers on every response.
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
		ri := &reqInfo{id: s.reqBase + "-" + strconv.FormatUint(s.reqSeq.Add(1), 10)}
		logger := s.logger.With().Str("request_id", ri.id).Logger()
		ctx := context.WithValue(r.Context(), reqInfoKey{}, ri)
		ctx = logger.WithContext(ctx)
		r = r.WithContext(ctx)
		sw := &statusWriter{ResponseWriter: w}
		ri.ip = s.clientAddr(r)
		if _, pattern := s.mux.Handler(r); pattern != "" {
			ri.route = pattern
		}
		if r.Method == http.MethodOptions {
			sw.WriteHeader(http.StatusOK)
		} else {
			if !s.streamsBody(r) {
				r.Body = http.MaxBytesReader(sw, r.Body, s.cfg.MaxRequestBodySize)
			}
			after, err := s.rateLimit(r)
			if err != nil {
				writeError(sw, r, err)
			} else {
				next.ServeHTTP(sw, r)
				if after != nil {
					after(sw.status, ri.errcode)
				}
			}
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		lat := time.Since(start)
		route := ri.route
		if route == "" {
			route = "unmatched"
		}
		s.latency.WithLabelValues(route, r.Method, strconv.Itoa(sw.status)).Observe(lat.Seconds())
		ev := logger.Info()
		if sw.status >= 500 {
			ev = logger.Error()
		}
		ev = ev.Str("method", r.Method).Str("path", r.URL.Path).Int("status", sw.status)
		// Fields a request does not have are left out, not logged empty.
		for _, f := range [...][2]string{{"user", ri.user}, {"room", ri.room}, {"errcode", ri.errcode}} {
			if f[1] != "" {
				ev = ev.Str(f[0], f[1])
			}
		}
		ev.Float64("latency_ms", float64(lat.Microseconds())/1000).Msg("request")
	})
}

// readJSON decodes the request body into v: M_TOO_LARGE when over the body
// limit, M_NOT_JSON when not JSON, M_BAD_JSON when not an object of the
// expected shape. An empty body reads as {}.
func readJSON(r *http.Request, v any) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	return decodeJSON(body, v)
}

// readBody reads a request body, "{}" when it is empty.
func readBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, merr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body is larger than %d bytes", mbe.Limit)
		}
		return nil, merr(http.StatusBadRequest, "M_UNKNOWN", "Could not read the request body: %v", err)
	}
	if len(body) == 0 {
		body = []byte("{}")
	}
	return body, nil
}

// decodeJSON decodes a request body that must be a JSON object into v.
func decodeJSON(body []byte, v any) error {
	// encoding/json would quietly turn invalid UTF-8 into U+FFFD; the spec
	// requires UTF-8, so such a body is not JSON.
	if !utf8.Valid(body) || !json.Valid(body) {
		return merr(http.StatusBadRequest, "M_NOT_JSON", "Request body is not valid UTF-8 JSON")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return errBadJSON("Request body must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errBadJSON("Request body has a field of the wrong type: %v", err)
	}
	return nil
}

// logDeprecatedQueryToken notes clients still sending ?access_token=.
func logDeprecatedQueryToken(r *http.Request) {
	zerolog.Ctx(r.Context()).Warn().Msg("client sent the access token in the query string, which the spec deprecates; use the Authorization: Bearer header")
}
