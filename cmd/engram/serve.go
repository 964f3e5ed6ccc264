package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/engram-hs/engram/internal/debugpprof"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/api/appservice"
	"github.com/engram-hs/engram/federation"
	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres/signing"
)

// shutdownBudget bounds a graceful stop: draining requests gets most of
// it, closing the engine and the log the rest.
const shutdownBudget = 10 * time.Second

func serveCmd(args []string) int {
	cf := newConfigFlags("serve", true)
	acceptLoss := cf.fs.Bool("accept-data-loss", false, "start although acknowledged log entries are missing (after a damaged write-ahead log), instead of restoring a backup")
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	l, err := cf.load(true)
	if err != nil {
		return fail(2, "%v", err)
	}
	if err := checkRegistration(l.cfg); err != nil {
		return fail(2, "%v", err)
	}
	logger := newLogger(l.cfg.LogLevel)
	for _, w := range l.warnings {
		logger.Warn().Msg(w)
	}
	if l.cfg.appservices, err = appservice.Load(l.cfg.AppServiceConfigFiles, l.cfg.ServerName); err != nil {
		return fail(2, "%v", err)
	}
	for _, reg := range l.cfg.appservices.All() {
		logger.Info().Str("appservice", reg.ID).Str("sender", reg.Sender()).Bool("pushes", reg.Pushes()).Msg("application service registered")
	}
	key, createdKey, err := loadOrCreateSigningKey(l.cfg.SigningKeyPath)
	if err != nil {
		return fail(1, "%v", err)
	}
	if createdKey {
		logger.Info().Str("path", l.cfg.SigningKeyPath).Str("key_id", key.ID).Msg("created a new signing key")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	l.acceptDataLoss = *acceptLoss
	if err := run(ctx, l, key, logger); err != nil {
		logger.Error().Err(err).Msg("engram stopped")
		return 1
	}
	return 0
}

// openLog opens this node's log in <data_dir>/db for serving: a cluster
// node joins its cluster.
func openLog(cfg Config, logger zerolog.Logger, metrics prometheus.Registerer, acceptDataLoss bool) (*englog.Node, error) {
	raftTLS, err := clusterTLS(cfg)
	if err != nil {
		return nil, err
	}
	return englog.Open(logConfig(cfg, logger, metrics, acceptDataLoss, raftTLS))
}

// rebuildDir holds the scratch stores of projection rebuilds
// (Engine.RebuildIn), beside the log's DB on the same filesystem.
func rebuildDir(cfg Config) string { return filepath.Join(cfg.DataDir, "rebuild") }

// openLogOffline opens this node's log for a tool run while the server is
// stopped: it reads the local store and never joins the cluster (no raft
// port, no peer dialled), so a tool cannot disturb the running nodes.
func openLogOffline(cfg Config, logger zerolog.Logger) (*englog.Node, error) {
	c := logConfig(cfg, logger, nil, false, nil)
	c.Offline = true
	return englog.Open(c)
}

func logConfig(cfg Config, logger zerolog.Logger, metrics prometheus.Registerer, acceptDataLoss bool, raftTLS *tls.Config) englog.Config {
	return englog.Config{
		TLS:            raftTLS,
		Dir:            filepath.Join(cfg.DataDir, "db"),
		NodeID:         cfg.ClusterNodeID,
		RaftAddr:       cfg.ClusterRaftListen,
		Peers:          cfg.ClusterPeers,
		Logger:         logger,
		Metrics:        metrics,
		DiskReserve:    uint64(cfg.DiskReserve),
		BallastSize:    cfg.DiskBallast,
		MemoryTarget:   cfg.MemoryTarget,
		AcceptDataLoss: acceptDataLoss,
	}
}

// run serves until ctx is cancelled (SIGTERM/SIGINT), then shuts down
// within shutdownBudget.
func run(ctx context.Context, l loaded, key signing.Key, logger zerolog.Logger) error {
	cfg := l.cfg
	setGC(cfg.MemoryTarget, os.LookupEnv, logger)
	go returnMemory(ctx)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerMallocMetrics(reg)

	node, err := openLog(cfg, logger, reg, l.acceptDataLoss)
	if err != nil {
		return err
	}
	engine := projections.NewEngine(node, node.DB(), logger, reg)
	engine.RebuildIn(rebuildDir(cfg))
	node.OnTableDamage(engine.CheckTable)
	fedClient, err := newFederationClient(cfg, key, logger)
	if err != nil {
		node.Close()
		return err
	}
	remote := &federation.Remote{Client: fedClient}
	apiSrv, roomWriter, err := newAPI(cfg, key, node, engine, remote, logger, reg)
	if err != nil {
		node.Close()
		return err
	}
	fed, err := newFederation(cfg, key, node, engine, roomWriter, fedClient, logger, reg)
	if err != nil {
		node.Close()
		return err
	}
	remote.Acted = fed.queue.MarkUp
	apiSrv.SetEDUOutbound(fed.queue)
	apiSrv.SetRoomFederation(fed.server)
	roomWriter.SetOutbound(federation.RoomDelivery(fed.queue))
	fed.server.SetMedia(apiSrv.MediaRepo())
	// closeAll releases in reverse order of opening; the log goes last so
	// the engine's final batch lands in an open Pebble.
	closeAll := func() {
		apiSrv.Close()
		fed.close()
		if err := engine.Close(); err != nil {
			logger.Error().Err(err).Msg("closing the projection engine")
		}
		if err := node.Close(); err != nil {
			logger.Error().Err(err).Msg("closing the log")
		}
	}
	started := time.Now()
	if err := engine.Start(ctx); err != nil {
		closeAll()
		if ctx.Err() != nil {
			return nil // stopped during catch-up
		}
		return err
	}
	logger.Info().Uint64("log_offset", node.LastOffset()).Int64("catch_up_ms", time.Since(started).Milliseconds()).Msg("projections caught up")
	if err := apiSrv.CheckServerName(ctx); err != nil {
		// A cluster node that cannot write yet (no leader elected, or a
		// follower) leaves recording the name to the leader; a name that
		// differs from the recorded one is refused all the same.
		var me *mxerr.Error
		if cfg.ClusterRaftListen == "" || !errors.As(err, &me) || me.Status != http.StatusServiceUnavailable {
			closeAll()
			return err
		}
		logger.Info().Msg("server name not recorded by this node: it cannot write now; the cluster leader records it")
	}
	fed.start()
	apiSrv.StartMediaJanitor()
	apiSrv.StartPushDelivery()
	if err := apiSrv.StartAppservices(node.IsLeader); err != nil {
		closeAll()
		return err
	}

	// Any node takes any request: a follower forwards writes to the
	// leader and answers once its projections have the leader's answer.
	fwd := node.Forwarding(func(ctx context.Context, off uint64) error {
		for _, h := range engine.Handles() {
			if err := h.WaitApplied(ctx, off); err != nil {
				return fmt.Errorf("projection %s: %w", h.Name(), err)
			}
		}
		return nil
	})
	fwd.Serve(map[string]http.Handler{"client": apiSrv.Handler(), "federation": fed.server.Handler()})
	closeAllButForwarding := closeAll
	closeAll = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		fwd.Close(ctx)
		closeAllButForwarding()
	}

	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	clientMux := http.NewServeMux()
	if cfg.MetricsListen == "" {
		clientMux.Handle("GET /_engram/metrics", metricsHandler)
	}
	clientMux.Handle("GET /_engram/backup/log", backupHandler(cfg.RegistrationSharedSecret, node))
	clientMux.Handle("POST /_engram/cluster/", clusterOpsHandler(cfg.RegistrationSharedSecret, node))
	clientMux.Handle("/", fwd.Handler("client", apiSrv.Handler()))
	if cfg.FederationListen != "" {
		// The client listener serves the federation and key APIs too, as
		// a Synapse listener with the client and federation resources
		// does: a reverse proxy may send both to one port, and an unknown
		// method on a known federation path is 405 there, not 404.
		fedHandler := fwd.Handler("federation", fed.server.Handler())
		clientMux.Handle("/_matrix/federation/", fedHandler)
		clientMux.Handle("/_matrix/key/", fedHandler)
	}

	type listener struct {
		name string
		srv  *http.Server
		ln   net.Listener
		tls  bool
	}
	var lns []listener
	closeListeners := func() {
		for _, x := range lns {
			x.ln.Close()
		}
	}
	add := func(name, addr string, h http.Handler, tlsOn bool) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening for %s on %s (port in use? change %s): %w", name, addr, name, err)
		}
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			// net/http reports client mistakes (TLS handshakes with our
			// self-signed certificate, broken connections) here: debug.
			ErrorLog: stdlog.New(httpErrorLog{logger.With().Str("listener", name).Logger()}, "", 0),
		}
		lns = append(lns, listener{name, srv, ln, tlsOn})
		return nil
	}
	if err := add("listen", cfg.Listen, clientMux, false); err != nil {
		closeAll()
		return err
	}
	if cfg.MetricsListen != "" {
		// An operator-only address: metrics, and the Go runtime profiles
		// (on the client listener these are for admins only).
		metricsMux := http.NewServeMux()
		metricsMux.Handle("GET /_engram/metrics", metricsHandler)
		debugpprof.Register(metricsMux)
		if err := add("metrics_listen", cfg.MetricsListen, metricsMux, false); err != nil {
			closeListeners()
			closeAll()
			return err
		}
	}
	if cfg.FederationListen != "" {
		tlsConf, how, err := federationTLS(cfg, time.Now())
		if err != nil {
			closeListeners()
			closeAll()
			return err
		}
		if err := add("federation_listen", cfg.FederationListen, fwd.Handler("federation", fed.server.Handler()), true); err != nil {
			closeListeners()
			closeAll()
			return err
		}
		lns[len(lns)-1].srv.TLSConfig = tlsConf
		logger.Info().Str("certificate", how).Msg("federation TLS")
	}

	// Said before the listeners (bound already) serve: whoever sees the
	// server answer has the advice on stdout too.
	if l.created {
		fmt.Fprintf(os.Stdout, `
Engram created %s (configuration), its signing key and its database.
Create the first admin user, while the server runs, with (it asks for
the password):

    %s register-user --config %s --user admin --admin

`, l.path, selfCommand(), l.path)
	}
	errs := make(chan error, len(lns))
	for _, x := range lns {
		x := x
		logger.Info().Str("listener", x.name).Str("addr", x.ln.Addr().String()).Bool("tls", x.tls).Msg("serving")
		go func() {
			var err error
			if x.tls {
				err = x.srv.ServeTLS(x.ln, "", "")
			} else {
				err = x.srv.Serve(x.ln)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("%s: %w", x.name, err)
			}
		}()
	}
	logger.Info().Str("server_name", cfg.ServerName).Str("config", l.path).Str("version", version).Msg("engram is ready")

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info().Msg("stopping: draining requests")
	case runErr = <-errs:
		logger.Error().Err(runErr).Msg("a listener failed; stopping")
	}

	stopping := time.Now()
	deadline := stopping.Add(shutdownBudget)
	// Long-polls (/sync) end first so draining does not wait for them.
	apiSrv.Close()
	drainCtx, cancel := context.WithDeadline(context.Background(), deadline.Add(-2*time.Second))
	defer cancel()
	var wg sync.WaitGroup
	for _, x := range lns {
		wg.Add(1)
		go func(srv *http.Server) {
			defer wg.Done()
			if err := srv.Shutdown(drainCtx); err != nil {
				srv.Close() // the budget is spent: cut what is left
			}
		}(x.srv)
	}
	wg.Wait()
	closeAll()
	logger.Info().Int64("took_ms", time.Since(stopping).Milliseconds()).Msg("stopped")
	return runErr
}

// httpErrorLog sends net/http's own messages to zerolog at debug level.
type httpErrorLog struct{ l zerolog.Logger }

func (w httpErrorLog) Write(p []byte) (int, error) {
	w.l.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// newAPI registers the room write path and the client API on engine,
// before it starts. The room writer is returned for federation, which
// writes room events through the same one. remote may be nil (no
// federation).
func newAPI(cfg Config, key signing.Key, node englog.Log, engine *projections.Engine, remote api.Remote, logger zerolog.Logger, reg prometheus.Registerer) (*api.Server, *roomwrite.Writer, error) {
	rw, err := roomwrite.New(roomwrite.Config{ServerName: cfg.ServerName, SigningKeyID: key.ID, SigningKey: key.Private, Logger: logger}, node, engine)
	if err != nil {
		return nil, nil, err
	}
	srv, err := api.New(cfg.apiConfig(), api.Deps{Log: node, Engine: engine, Rooms: rw, Logger: logger, Metrics: reg, Remote: remote})
	return srv, rw, err
}
