package keys

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"time"
)

// Remote asks other servers over federation for their users' keys
// (federation.Remote is one; cmd/engram wires it through api). nil: this
// server does not federate, and every remote server is a failure.
type Remote interface {
	QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error)
	ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error)
}

// remoteTimeout is the spec's recommended default for timeout; a client
// may ask for less, and for at most maxRemoteTimeout.
const (
	remoteTimeout    = 10 * time.Second
	maxRemoteTimeout = 60 * time.Second
)

func timeoutOf(ms *int64) time.Duration {
	if ms == nil || *ms < 0 {
		return remoteTimeout
	}
	return min(time.Duration(*ms)*time.Millisecond, maxRemoteTimeout)
}

// failure is a failures entry: why a server could not be asked.
func failure(err error) map[string]any {
	return map[string]any{"status": 503, "message": err.Error()}
}

// askServers calls ask for every server at once, each within timeout,
// and returns the answers and the failures by server.
func askServers[Q any](ctx context.Context, byServer map[string]Q, timeout time.Duration, ask func(ctx context.Context, server string, q Q) (json.RawMessage, error)) (map[string]json.RawMessage, map[string]any) {
	answers, failures := map[string]json.RawMessage{}, map[string]any{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, server := range slices.Sorted(maps.Keys(byServer)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := ask(ctx, server, byServer[server])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures[server] = failure(err)
			} else {
				answers[server] = a
			}
		}()
	}
	wg.Wait()
	return answers, failures
}
