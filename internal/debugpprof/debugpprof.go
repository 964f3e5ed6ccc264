// Package debugpprof serves Go's runtime profiles under
// /_engram/debug/pprof/, so that operators can profile a live server with
// `go tool pprof`. It does no access control: the binary mounts it on
// metrics_listen (an operator-only address) and, on the client listener,
// behind the admin API's check (admins only).
package debugpprof

import (
	"net/http"
	"net/http/pprof"
)

// Prefix is where the profiles are served.
const Prefix = "/_engram/debug/pprof/"

// Index lists the profiles (GET Prefix).
func Index(w http.ResponseWriter, r *http.Request) {
	// pprof.Index finds a profile's name only under /debug/pprof/; under
	// our prefix it renders the list, whose links are relative to Prefix
	// and so come back to Profile.
	pprof.Index(w, r)
}

// Profile serves one profile (GET Prefix + "{profile}"): cmdline,
// profile (CPU, ?seconds=N), symbol, trace, or a runtime profile (heap,
// goroutine, allocs, block, mutex, threadcreate).
func Profile(w http.ResponseWriter, r *http.Request) {
	switch name := r.PathValue("profile"); name {
	case "cmdline":
		pprof.Cmdline(w, r)
	case "profile":
		pprof.Profile(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	case "trace":
		pprof.Trace(w, r)
	default:
		pprof.Handler(name).ServeHTTP(w, r)
	}
}

// Register mounts Index and Profile on mux, unauthenticated.
func Register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+Prefix, Index)
	mux.HandleFunc("GET "+Prefix+"{profile}", Profile)
}
