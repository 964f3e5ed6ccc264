package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

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
		if r.Method == http.MethodOptions {
			sw.WriteHeader(http.StatusOK)
		} else {
			r.Body = http.MaxBytesReader(sw, r.Body, s.cfg.MaxRequestBodySize)
			if err := s.rateLimit(r); err != nil {
				writeError(sw, r, err)
			} else {
				next.ServeHTTP(sw, r)
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
		ev.Str("method", r.Method).Str("path", r.URL.Path).Int("status", sw.status).
			Str("user", ri.user).Str("room", ri.room).Str("errcode", ri.errcode).
			Dur("latency", lat).Msg("request")
	})
}

// rateLimit applies a token bucket per user for authenticated writes and
// per client IP otherwise. Reads (GET) are not limited: a client's sync
// loop must never be throttled into missing events.
func (s *Server) rateLimit(r *http.Request) error {
	if s.limiter == nil || r.Method == http.MethodGet {
		return nil
	}
	key := ""
	if tok := bearerToken(r); tok != "" {
		if sess, err := s.lookupToken(tok); err == nil && sess != nil {
			key = "u:" + sess.UserID
		}
	}
	if key == "" {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		key = "ip:" + host
	}
	if wait := s.limiter.take(key, time.Now()); wait > 0 {
		ms := int64(math.Ceil(float64(wait) / float64(time.Millisecond)))
		return merr(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many requests; retry later").With("retry_after_ms", ms)
	}
	return nil
}

// rateLimiter is a set of token buckets keyed by user or IP.
type rateLimiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate, burst float64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: burst, buckets: map[string]*bucket{}}
}

// take spends one token; it returns 0 when allowed, else how long until a
// token is available.
func (l *rateLimiter) take(key string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) > 100_000 {
			l.evictFull(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// evictFull drops buckets that have refilled: forgetting them changes
// nothing, so the map stays bounded by the number of active clients.
func (l *rateLimiter) evictFull(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// readJSON decodes the request body into v: M_TOO_LARGE when over the body
// limit, M_NOT_JSON when not JSON, M_BAD_JSON when not an object of the
// expected shape. An empty body reads as {}.
func readJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return merr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body is larger than %d bytes", mbe.Limit)
		}
		return merr(http.StatusBadRequest, "M_UNKNOWN", "Could not read the request body: %v", err)
	}
	if len(body) == 0 {
		body = []byte("{}")
	}
	if !json.Valid(body) {
		return merr(http.StatusBadRequest, "M_NOT_JSON", "Request body is not valid JSON")
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
