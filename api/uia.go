package api

import (
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"
)

// User-interactive authentication (spec: "User-Interactive Authentication
// API"). UIA sessions are ephemeral request state, like nonces: they are not
// facts and live in memory with an expiry; what they authorise is logged.

type uiaSession struct {
	completed []string
	expires   time.Time
}

type uiaStore struct {
	mu       sync.Mutex
	sessions map[string]*uiaSession
}

func newUIAStore() *uiaStore { return &uiaStore{sessions: map[string]*uiaSession{}} }

const uiaLifetime = 10 * time.Minute

// authDict is the "auth" object of a UIA request.
type authDict struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Password   string          `json:"password"`
	Token      string          `json:"token"`
	User       string          `json:"user"`
	Identifier *userIdentifier `json:"identifier"`
}

type userIdentifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

type uiaFlow struct {
	Stages []string `json:"stages"`
}

// uiaRefused is a stage verdict that ends the exchange: the request is
// refused with this error rather than challenged again.
type uiaRefused struct{ *matrixError }

// uiaStageCheck verifies one completed stage; a returned error is the
// reason the stage failed.
type uiaStageCheck func(stage string, a *authDict) error

// check runs one round of UIA. It returns nil when a flow is complete;
// otherwise an error that writes the 401 challenge.
func (u *uiaStore) check(raw json.RawMessage, flows [][]string, verify uiaStageCheck) error {
	now := time.Now()
	var a *authDict
	if len(raw) > 0 && string(raw) != "null" {
		a = &authDict{}
		if err := json.Unmarshal(raw, a); err != nil {
			return errBadJSON("auth must be an object")
		}
	}
	var sessID string
	var sess *uiaSession
	u.mu.Lock()
	if a != nil && a.Session != "" {
		sessID, sess = a.Session, u.sessions[a.Session]
		if sess != nil && now.After(sess.expires) {
			delete(u.sessions, sessID)
			sess = nil
		}
		if sess == nil {
			u.mu.Unlock()
			return merr(http.StatusBadRequest, "M_UNKNOWN", "Unknown or expired UIA session")
		}
	}
	if sess == nil {
		sessID = randomString(18)
		sess = &uiaSession{expires: now.Add(uiaLifetime)}
		makeRoom(u.sessions, now, func(s *uiaSession) time.Time { return s.expires })
		u.sessions[sessID] = sess
	}
	u.mu.Unlock()

	var stageErr error
	if a != nil && a.Type != "" {
		allowed := false
		for _, f := range flows {
			if slices.Contains(f, a.Type) {
				allowed = true
			}
		}
		if !allowed {
			stageErr = merr(http.StatusBadRequest, "M_UNRECOGNIZED", "Authentication stage %q is not offered", a.Type)
		} else if err := verify(a.Type, a); err != nil {
			stageErr = err
		} else {
			u.mu.Lock()
			if !slices.Contains(sess.completed, a.Type) {
				sess.completed = append(sess.completed, a.Type)
			}
			u.mu.Unlock()
		}
	}
	u.mu.Lock()
	completed := slices.Clone(sess.completed)
	u.mu.Unlock()
	for _, f := range flows {
		done := true
		for _, st := range f {
			if !slices.Contains(completed, st) {
				done = false
			}
		}
		if done {
			u.mu.Lock()
			delete(u.sessions, sessID)
			u.mu.Unlock()
			return nil
		}
	}
	fl := make([]uiaFlow, len(flows))
	for i, f := range flows {
		fl[i] = uiaFlow{Stages: f}
	}
	e := &matrixError{Status: http.StatusUnauthorized}
	if ref, ok := stageErr.(uiaRefused); ok {
		return ref.matrixError
	}
	if stageErr != nil {
		if me, ok := stageErr.(*matrixError); ok {
			e.Code, e.Msg = me.Code, me.Msg
		} else {
			return stageErr
		}
	}
	e.With("flows", fl).With("params", map[string]any{}).With("session", sessID)
	if len(completed) > 0 {
		e.With("completed", completed)
	}
	return e
}
