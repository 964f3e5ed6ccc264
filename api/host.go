package api

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"

	"github.com/engram-hs/engram/api/admin"
	"github.com/engram-hs/engram/api/apihttp"
	apimedia "github.com/engram-hs/engram/api/media"
	"github.com/engram-hs/engram/api/ratelimit"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/media"
	"github.com/engram-hs/engram/projections"
)

// host is the apihttp.Host the api sub-packages register with.
type host struct{ s *Server }

func (h host) Handle(method, path string, fn apihttp.Handler) {
	h.s.handle(method, path, handlerFunc(fn))
}

func (h host) HandleStream(method, path string, fn apihttp.Handler) {
	h.s.streamed[method+" "+path] = true
	h.s.handle(method, path, handlerFunc(fn))
}

func (h host) Authenticate(r *http.Request) (*apihttp.Caller, error) {
	sess, err := h.s.authenticate(r)
	if err != nil {
		return nil, err
	}
	return &apihttp.Caller{UserID: sess.UserID, DeviceID: sess.DeviceID, Admin: sess.Admin, Guest: sess.Guest}, nil
}

func (h host) RateLimit(rule, subject string) error {
	if h.s.limiter == nil {
		return nil
	}
	var r ratelimit.Rule
	switch rule {
	case "rc_media_create":
		r = h.s.cfg.RateLimits.MediaCreate
	default:
		return fmt.Errorf("api: unknown rate limit rule %q", rule)
	}
	if !r.Limits() {
		return nil
	}
	if wait := h.s.limiter.Take(rule, r, subject); wait > 0 {
		return ratelimit.Exceeded(wait)
	}
	return nil
}

func (h host) Commit(ctx context.Context, wait []*projections.Handle, props ...englog.Proposal) ([]uint64, error) {
	return h.s.commit(ctx, wait, props...)
}

func (h host) ReadJSON(r *http.Request, v any) error { return readJSON(r, v) }

// streamsBody says whether the request goes to an endpoint registered with
// HandleStream, whose body the JSON body limit must not cut short.
func (s *Server) streamsBody(r *http.Request) bool {
	if len(s.streamed) == 0 {
		return false
	}
	_, pattern := s.mux.Handler(r)
	return s.streamed[pattern]
}

// mountMedia opens the media repository and registers its endpoints, when
// the configuration names a directory for it (cfg.Media.Repo.Dir; the
// binary always does, under data_dir).
func (s *Server) mountMedia(deps Deps) error {
	mc := s.cfg.Media
	if mc.Repo.Dir == "" {
		return nil
	}
	mc.Repo.ServerName = s.cfg.ServerName
	if mc.Repo.MaxUploadSize == 0 {
		mc.Repo.MaxUploadSize = s.cfg.MaxUploadSize
	}
	repo, err := media.Open(mc.Repo, deps.Log, s.mediaH, deps.Logger)
	if err != nil {
		return err
	}
	if _, err = apimedia.New(mc, host{s}, repo, s.logger); err != nil {
		return err
	}
	s.media = repo
	if f, ok := deps.Remote.(media.Fetcher); ok {
		repo.SetFetcher(f)
	}
	return nil
}

// StartMediaJanitor runs media retention and blob collection (media.Repo.Run)
// until Close, which waits for it to stop; the binary calls it once the projections caught up (never
// in offline tools, whose projections may be mid-rebuild).
func (s *Server) StartMediaJanitor() {
	if s.media == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-s.closed; cancel() }()
	s.background.Go(func() { s.media.Run(ctx) })
}

// MediaRepo is the media repository (nil when none is configured), for
// the federation endpoints the binary mounts.
func (s *Server) MediaRepo() *media.Repo { return s.media }

// mediaUsage is the admin API's view of users' uploads.
func (s *Server) mediaUsage() admin.MediaUsage {
	if s.media == nil {
		return nil
	}
	return s.media
}

func (h host) RoomEventContents(ctx context.Context, roomID string) ([]json.RawMessage, error) {
	v := h.s.roomsView()
	var out []json.RawMessage
	from := uint64(math.MaxUint64)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		page, err := v.Timeline(roomID, from, false, 500, 0)
		if err != nil {
			return nil, err
		}
		for _, te := range page {
			ev, err := v.Event(te.EventID)
			if err != nil {
				return nil, err
			}
			if ev == nil {
				continue
			}
			var pdu struct {
				Content json.RawMessage `json:"content"`
			}
			if json.Unmarshal(ev.JSON, &pdu) == nil && len(pdu.Content) > 0 {
				out = append(out, pdu.Content)
			}
		}
		if len(page) < 500 {
			return out, nil
		}
		from = page[len(page)-1].Offset
	}
}
