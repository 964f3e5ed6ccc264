package admin

import (
	"net/http"

	"github.com/engram-hs/engram/internal/debugpprof"
)

// debugEndpoints serve the Go runtime profiles to admins on the client
// listener (on metrics_listen the binary serves them to anyone who can
// reach that address).
func debugEndpoints() []endpoint {
	return []endpoint{
		{"GET", debugpprof.Prefix, func(w http.ResponseWriter, r *http.Request, _ Caller) error {
			debugpprof.Index(w, r)
			return nil
		}},
		{"GET", debugpprof.Prefix + "{profile}", func(w http.ResponseWriter, r *http.Request, _ Caller) error {
			debugpprof.Profile(w, r)
			return nil
		}},
	}
}
