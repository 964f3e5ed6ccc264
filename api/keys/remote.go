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

// remoteFromCopy answers for a remote user from this server's copy of
// their device list (projections/e2ee RemoteList) when it is known to be
// complete; ok is false when their server must be asked instead.
func (s *Service) remoteFromCopy(user string, wanted []string, requester string,
	devices map[string]map[string]json.RawMessage, master, selfSigning map[string]json.RawMessage) (bool, error) {
	l, err := s.view().RemoteList(user)
	if err != nil || l == nil || l.Stale {
		return false, err
	}
	if ok, err := s.sharedSince(user, l.ResyncedAt); err != nil || !ok {
		return false, err
	}
	devs, err := l.RenderRemote(wanted)
	if err != nil {
		return false, err
	}
	devices[user] = devs
	if l.Master != nil {
		signed, err := s.view().WithRemoteSignatures(requester, user, l.Master)
		if err != nil {
			return false, err
		}
		master[user] = signed
	}
	if l.SelfSigning != nil {
		selfSigning[user] = l.SelfSigning
	}
	return true, nil
}

// sharedSince reports whether a remote user has been joined, since log
// offset at, to a room that a local user has been joined to since then
// too. Their server sends us their device-list updates only while they
// share a room with one of ours: a copy fetched at at is complete only if
// that never stopped.
func (s *Service) sharedSince(user string, at uint64) (bool, error) {
	rv := s.d.Rooms()
	ms, err := rv.Memberships(user)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.Membership != "join" || m.Offset > at {
			continue
		}
		members, err := rv.MemberIDs(m.RoomID, "join")
		if err != nil {
			return false, err
		}
		for _, member := range members {
			if !s.local(member) {
				continue
			}
			lm, err := rv.Membership(member, m.RoomID)
			if err != nil {
				return false, err
			}
			if lm != nil && lm.Offset <= at {
				return true, nil
			}
		}
	}
	return false, nil
}
