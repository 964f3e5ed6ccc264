package log

import (
	"bytes"
	"fmt"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/rs/zerolog"
)

// newHCLogger routes raft's hclog output to zerolog at warn and above:
// raft is chatty at info about routine elections and snapshots. A single
// node's election, on every start, is routine: debug.
func newHCLogger(l zerolog.Logger, single bool) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:   "raft",
		Level:  hclog.Warn,
		Output: zerologWriter{l.With().Str("subsystem", "raft").Logger(), single},
	})
}

type zerologWriter struct {
	l      zerolog.Logger
	single bool
}

func (w zerologWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	// hclog's line format is "<time> [LEVEL] name: message: k=v".
	if i := bytes.Index(p, []byte("] ")); i > 0 {
		msg = string(bytes.TrimSpace(p[i+2:]))
	}
	ev := w.l.Warn()
	switch {
	case bytes.Contains(p, []byte("[ERROR]")):
		ev = w.l.Error()
	case w.single:
		ev = w.l.Debug() // a one-voter cluster electing itself
	case bytes.Contains(p, []byte("heartbeat timeout reached")):
		// Every start of a node begins this way.
		ev = w.l.Info()
	}
	ev.Msg(msg)
	return len(p), nil
}

// pebbleLogger sends Pebble's routine messages (WAL replay, compactions)
// to debug. Fatalf means Pebble cannot go on (see diskGuard).
type pebbleLogger struct{ l zerolog.Logger }

func (p pebbleLogger) Infof(format string, args ...interface{}) {
	p.l.Debug().Msg(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...interface{}) {
	p.l.Error().Msg(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Fatalf(format string, args ...interface{}) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error().Msg(msg)
	panic(pebbleFatal{msg: msg})
}
