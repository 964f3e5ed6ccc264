package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/engram-hs/engram/api/admin"
	"github.com/engram-hs/engram/api/keys"
	"github.com/engram-hs/engram/api/ratelimit"
	"github.com/engram-hs/engram/api/spaces"
	"github.com/engram-hs/engram/internal/keyedmutex"
	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/media"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/projections/adminstate"
	asproj "github.com/engram-hs/engram/projections/appservice"
	mediaproj "github.com/engram-hs/engram/projections/media"
	"github.com/engram-hs/engram/projections/openid"
	"github.com/engram-hs/engram/projections/relations"
	"github.com/engram-hs/engram/projections/reports"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/projections/search"
	"github.com/engram-hs/engram/projections/userdata"
	"github.com/engram-hs/engram/push/gateway"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Deps are the running pieces the API is wired to by the binary.
type Deps struct {
	Log    englog.Log
	Engine *projections.Engine
	// Rooms is the room write path (it registered the rooms projection);
	// its server name must be the config's.
	Rooms   *roomwrite.Writer
	Logger  zerolog.Logger
	Metrics prometheus.Registerer
	// Remote asks other servers (federation); nil: no federation.
	Remote Remote
}

// Server is the client-server API.
type Server struct {
	cfg    Config
	log    englog.Log
	logger zerolog.Logger
	remote Remote
	eduOut EDUOutbound
	// roomFed takes room actions to other servers (SetRoomFederation).
	roomFed RoomFederation

	accounts  *accounts.Projection // its View caches what each request reads
	accountsH *projections.Handle
	erased    atomic.Pointer[erasedSet] // visibility.go
	roomsH    *projections.Handle       // roomWrite's
	userdataH *projections.Handle
	reportsH  *projections.Handle
	openidH   *projections.Handle
	// adminDecisions (adminstate): what admins decided about rooms and
	// the server; its View caches what reading a timeline consults.
	adminDecisions *adminstate.Projection
	adminH         *projections.Handle
	// appserviceH: where each application service's delivery stands;
	// asClient makes the requests to them.
	appserviceH *projections.Handle
	asClient    *http.Client
	admin       *admin.API
	keys        *keys.Service // end-to-end encryption (api/keys)
	engine      *projections.Engine
	searchH     *projections.Handle
	searcher    *search.Searcher
	mediaH      *projections.Handle
	media       *media.Repo // nil when no media directory is configured
	notifier    *notifier
	syncCache   *syncCache        // sync.go
	roomWrite   *roomwrite.Writer // builds, authorises and appends room events

	// relationsH: relations and threads (api/relations.go).
	relationsH *projections.Handle
	// notificationsH: push verdicts, read floors and pushers
	// (api/pushhost.go); pushSender delivers to push gateways.
	notificationsH *projections.Handle
	pushSender     *gateway.Sender

	// presenceClock: activity that changes nothing others see, kept in
	// memory instead of the log (api/presence.go).
	presenceClock presenceClock

	mux      *http.ServeMux  // method+path patterns
	streamed map[string]bool // patterns whose handlers bound their own bodies (host.go)
	pathMux  *http.ServeMux  // the same paths without methods: tells 405 from 404
	handler  http.Handler
	limiter  *ratelimit.Limiter // nil when rate limiting is off
	latency  *prometheus.HistogramVec
	// locks serialises checks and appends of non-room keys (an alias, a
	// user's registration, push rules); room events use roomWrite's lock.
	locks   keyedmutex.Mutex
	nonces  *nonceStore
	uia     *uiaStore
	lazy    lazyMemberCache // members already sent under lazy_load_members
	reqSeq  atomic.Uint64
	reqBase string

	closeOnce sync.Once
	closed    chan struct{}
	// background is the goroutines that read the store until Close (the
	// media janitor); Close waits for them, so that the store can be
	// closed after it.
	background sync.WaitGroup
}

// New builds the API and registers its projections on deps.Engine; call it
// before the engine starts.
func New(cfg Config, deps Deps) (*Server, error) {
	if cfg.ServerName == "" {
		return nil, errors.New("api: server_name is empty; set server_name in the config")
	}
	if deps.Log == nil || deps.Engine == nil || deps.Rooms == nil {
		return nil, errors.New("api: Deps.Log, Deps.Engine and Deps.Rooms are required")
	}
	if deps.Rooms.ServerName() != cfg.ServerName {
		return nil, fmt.Errorf("api: the room writer builds events for %q, not for server_name %q", deps.Rooms.ServerName(), cfg.ServerName)
	}
	if cfg.DefaultRoomVersion == "" {
		cfg.DefaultRoomVersion = stateres.DefaultRoomVersion
	}
	if _, ok := stateres.Version(cfg.DefaultRoomVersion); !ok {
		return nil, fmt.Errorf("api: default_room_version %q is not a known room version; use one of %v", cfg.DefaultRoomVersion, stateres.KnownVersions())
	}
	if cfg.MaxRequestBodySize <= 0 {
		cfg.MaxRequestBodySize = 10 << 20
	}
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	s := &Server{
		cfg:      cfg,
		log:      deps.Log,
		remote:   deps.Remote,
		logger:   deps.Logger.With().Str("component", "api").Logger(),
		mux:      http.NewServeMux(),
		pathMux:  http.NewServeMux(),
		streamed: map[string]bool{},
		nonces:   newNonceStore(),
		uia:      newUIAStore(),
		reqBase:  hex.EncodeToString(rb[:]),
		closed:   make(chan struct{}),
	}
	if cfg.RateLimitingEnabled {
		s.limiter = ratelimit.New()
	}
	s.notifier = newNotifier()
	s.accounts = accounts.New()
	s.accountsH = deps.Engine.Register(s.accounts)
	s.roomWrite = deps.Rooms
	s.roomsH = deps.Rooms.Handle()
	deps.Rooms.OnTouched(s.roomsTouched)
	s.userdataH = deps.Engine.Register(userdata.New(s.userdataTouched))
	s.newSyncCache()
	s.reportsH = deps.Engine.Register(reports.New())
	s.openidH = deps.Engine.Register(openid.New())
	s.adminDecisions = adminstate.New()
	s.adminH = deps.Engine.Register(s.adminDecisions)
	s.appserviceH = deps.Engine.Register(asproj.New())
	s.asClient = &http.Client{Timeout: 60 * time.Second}
	s.engine = deps.Engine
	s.keys = s.newKeys()
	s.relationsH = deps.Engine.Register(relations.New())
	searchP := search.New()
	s.searchH = deps.Engine.Register(searchP)
	s.searcher = searchP.Searcher(s.searchH)
	s.mediaH = deps.Engine.Register(mediaproj.New())

	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "engram", Subsystem: "client_api", Name: "request_duration_seconds",
		Help:    "Latency of client-server API requests by route, method and status.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"route", "method", "status"})
	if deps.Metrics != nil {
		if err := deps.Metrics.Register(s.latency); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("api: register metrics: %w", err)
			}
			s.latency = are.ExistingCollector.(*prometheus.HistogramVec)
		}
		if err := deps.Metrics.Register(newSyncCacheCollector(s.syncCache)); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return nil, fmt.Errorf("api: register metrics: %w", err)
		}
	}
	if err := s.mountMedia(deps); err != nil {
		return nil, err
	}
	if err := s.mountPush(deps); err != nil {
		return nil, err
	}
	spaces.New(spacesHost{host{s}})
	s.routes()
	s.handler = s.middleware(http.HandlerFunc(s.dispatch))
	return s, nil
}

// Handler serves every client-server endpoint.
func (s *Server) Handler() http.Handler { return s.handler }

// Close releases long-polls and waits for the background work (the media
// janitor) to stop; it does not close the log or the engine.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.notifier.wakeAll()
	})
	s.background.Wait()
}

// dispatch routes to the method+path mux, and tells an unknown path (404)
// from a known path with a wrong method (405), both M_UNRECOGNIZED.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) {
	if _, pattern := s.mux.Handler(r); pattern != "" {
		if ri := reqInfoFrom(r); ri != nil {
			ri.route = pattern
		}
		s.mux.ServeHTTP(w, r) // ServeHTTP, not the returned handler: it sets PathValue
		return
	}
	if _, p := s.pathMux.Handler(r); p != "" && p != "/" {
		writeError(w, r, errUnrecognized(http.StatusMethodNotAllowed))
		return
	}
	writeError(w, r, errUnrecognized(http.StatusNotFound))
}

// handlerFunc is a handler that reports failure by returning an error,
// written by writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// authedFunc is a handler that needs a valid access token.
type authedFunc func(w http.ResponseWriter, r *http.Request, sess *session) error

func (s *Server) handle(method, path string, h handlerFunc) {
	s.mux.HandleFunc(method+" "+path, func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			writeError(w, r, err)
		}
	})
	// Several methods share a path; register the method-less one once.
	func() {
		defer func() { _ = recover() }()
		s.pathMux.HandleFunc(path, func(http.ResponseWriter, *http.Request) {})
	}()
}

// client registers a client-server endpoint under /_matrix/client/v3 and
// its r0 alias.
func (s *Server) client(method, path string, h handlerFunc) {
	s.handle(method, "/_matrix/client/v3"+path, h)
	s.handle(method, "/_matrix/client/r0"+path, h)
}

func (s *Server) authed(h authedFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		sess, err := s.authenticate(r)
		if err != nil {
			return err
		}
		if sess.Guest && !guestAllowed(r) {
			return errGuestForbidden()
		}
		if answered, err := s.moderate(w, r, sess); answered || err != nil {
			return err
		}
		return h(w, r, sess)
	}
}

// commit appends proposals and waits until the given projections applied
// them, so the handler can answer from them (read-your-writes). Room
// events go through s.roomWrite instead.
func (s *Server) commit(ctx context.Context, wait []*projections.Handle, props ...englog.Proposal) ([]uint64, error) {
	offs, err := s.log.Append(ctx, props...)
	if err != nil {
		if errors.Is(err, englog.ErrNotLeader) {
			return nil, mxerr.NotLeader()
		}
		return nil, fmt.Errorf("append to log: %w", err)
	}
	last := offs[len(offs)-1]
	for _, h := range wait {
		if err := h.WaitApplied(ctx, last); err != nil {
			return nil, fmt.Errorf("wait for projection %s to apply offset %d: %w", h.Name(), last, err)
		}
	}
	return offs, nil
}

func (s *Server) accountsView() accounts.View { return s.accounts.View(s.accountsH.Reader()) }
func (s *Server) roomsView() rooms.View       { return s.roomWrite.View() }
func (s *Server) userdataView() userdata.View { return userdata.NewView(s.userdataH.Reader()) }

// nowMS is the clock handlers decide with (a variable so that tests can
// simulate a day).
var nowMS = func() int64 { return time.Now().UnixMilli() }
