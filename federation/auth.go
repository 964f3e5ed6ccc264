package federation

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/engram-hs/engram/federation/keys"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/federation/xmatrix"
)

// AuthedFunc is a handler of an authenticated federation request: origin
// is the server whose signature the request carries. A returned error is
// written as a Matrix error (see Error).
type AuthedFunc func(w http.ResponseWriter, r *http.Request, origin string) error

type originKey struct{}

// Origin returns the authenticated origin of a request served through
// authed ("" otherwise).
func Origin(r *http.Request) string {
	o, _ := r.Context().Value(originKey{}).(string)
	return o
}

// HandleAuthed registers pattern behind X-Matrix authentication (server-server
// API, "Request Authentication"): the request must carry a well-formed
// Authorization header whose signature, by a current key of origin,
// covers the method, the request target, origin, destination and the
// JSON body; a destination naming another server is refused. Every
// failure is 401 M_UNAUTHORIZED. The handler gets the body back to read.
func (s *Server) HandleAuthed(pattern string, h AuthedFunc) {
	s.Handle(pattern, func(w http.ResponseWriter, r *http.Request) {
		origin, body, err := s.authenticate(r)
		if err != nil {
			s.logger.Info().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Str("remote", r.RemoteAddr).Msg("federation request refused")
			writeError(w, err)
			return
		}
		if s.deps.Contacted != nil {
			s.deps.Contacted(origin)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r = r.WithContext(context.WithValue(r.Context(), originKey{}, origin))
		start := time.Now()
		err = h(w, r, origin)
		if err != nil {
			writeError(w, err)
		}
		ev := s.logger.Info()
		if err != nil {
			ev = ev.Err(err)
		}
		ev.Str("origin", origin).Str("method", r.Method).Str("path", r.URL.Path).Dur("took", time.Since(start)).Msg("federation request")
	})
}

func (s *Server) authenticate(r *http.Request) (origin string, body []byte, err error) {
	header := r.Header.Get("Authorization")
	if header == "" {
		return "", nil, errUnauthorized("Missing Authorization headers")
	}
	p, err := xmatrix.Parse(header)
	if err != nil {
		return "", nil, errUnauthorized("%v", err)
	}
	if p.Destination != "" && p.Destination != s.cfg.ServerName {
		return "", nil, errUnauthorized("The request is for %s, not this server (%s)", p.Destination, s.cfg.ServerName)
	}
	if _, _, _, err := transport.SplitServerName(p.Origin); err != nil {
		return "", nil, errUnauthorized("Invalid origin: %v", err)
	}
	if p.Origin == s.cfg.ServerName {
		return "", nil, errUnauthorized("The request claims to come from this server")
	}
	body, err = io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxRequestBody+1))
	if err != nil {
		return "", nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "Reading the request body: %v", err)
	}
	if int64(len(body)) > s.cfg.MaxRequestBody {
		return "", nil, Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "The request body is larger than %d bytes", s.cfg.MaxRequestBody)
	}
	if s.deps.Keys == nil {
		return "", nil, errUnauthorized("This server cannot check signatures")
	}
	pub, err := s.deps.Keys.Key(r.Context(), p.Origin, p.Key, keys.Validity{At: s.cfg.Now().UnixMilli(), Current: true})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return "", nil, err
		}
		return "", nil, errUnauthorized("Failed to find a current key %s of %s", p.Key, p.Origin)
	}
	if err := xmatrix.Verify(p, pub, r.Method, r.RequestURI, body); err != nil {
		return "", nil, errUnauthorized("Invalid signature for server %s with key %s", p.Origin, p.Key)
	}
	return p.Origin, body, nil
}

// SetServerACL installs the m.room.server_acl check: allowed reports
// whether origin may act in roomID. It reads room state, which this
// package does not own; the room handlers call CheckServerACL.
func (s *Server) SetServerACL(allowed func(r *http.Request, roomID, origin string) (bool, error)) {
	s.acl = allowed
}

// CheckServerACL returns 403 M_FORBIDDEN when the room's server ACL
// denies origin (nil when allowed or when no check is installed).
func (s *Server) CheckServerACL(r *http.Request, roomID, origin string) error {
	if s.acl == nil {
		return nil
	}
	ok, err := s.acl(r, roomID, origin)
	if err != nil {
		return err
	}
	if !ok {
		return Errorf(http.StatusForbidden, "M_FORBIDDEN", "Server %s is banned from room %s by its server ACL", origin, roomID)
	}
	return nil
}
