// Package appservice is the homeserver side of the Application Service API
// (spec: "Application Service API"): the registrations named by
// app_service_config_files, the namespaces they claim, and the delivery
// of the events they are interested in as transactions. Bridges and bots
// (mautrix, heisenbridge, ...) run on this.
package appservice

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Namespace is one entry of a registration's users, aliases or rooms list.
type Namespace struct {
	Exclusive bool   `yaml:"exclusive" json:"exclusive"`
	Regex     string `yaml:"regex" json:"regex"`
	re        *regexp.Regexp
}

func (n *Namespace) matches(s string) bool { return n.re.MatchString(s) }

// Registration is one application service's registration file (spec:
// "Registration").
type Registration struct {
	ID              string  `yaml:"id"`
	URL             *string `yaml:"url"` // nil or "": no traffic is pushed
	ASToken         string  `yaml:"as_token"`
	HSToken         string  `yaml:"hs_token"`
	SenderLocalpart string  `yaml:"sender_localpart"`
	Namespaces      struct {
		Users   []Namespace `yaml:"users"`
		Aliases []Namespace `yaml:"aliases"`
		Rooms   []Namespace `yaml:"rooms"`
	} `yaml:"namespaces"`
	// RateLimited: whether the users it masquerades as are rate limited.
	// Unset means no: an appservice speaks for many people at once.
	RateLimited      *bool    `yaml:"rate_limited"`
	Protocols        []string `yaml:"protocols"`
	ReceiveEphemeral bool     `yaml:"receive_ephemeral"`

	sender string // @sender_localpart:server_name
	file   string
}

// Sender is the appservice's own user, @sender_localpart:server_name.
func (r *Registration) Sender() string { return r.sender }

// Pushes says whether the homeserver sends it transactions (a URL is set).
func (r *Registration) Pushes() bool { return r.URL != nil && *r.URL != "" }

// Throttled says whether the users it masquerades as are rate limited.
func (r *Registration) Throttled() bool { return r.RateLimited != nil && *r.RateLimited }

// OwnsUser says whether the appservice may act as userID: its sender, or
// a local user matching one of its user namespaces.
func (r *Registration) OwnsUser(userID string) bool {
	return userID == r.sender || anyMatch(r.Namespaces.Users, userID, false)
}

// InterestedInAlias: the alias is in one of its alias namespaces.
func (r *Registration) InterestedInAlias(alias string) bool {
	return anyMatch(r.Namespaces.Aliases, alias, false)
}

// InterestedInRoom: the room ID is in one of its room namespaces.
func (r *Registration) InterestedInRoom(roomID string) bool {
	return anyMatch(r.Namespaces.Rooms, roomID, false)
}

func anyMatch(ns []Namespace, s string, exclusiveOnly bool) bool {
	for i := range ns {
		if (!exclusiveOnly || ns[i].Exclusive) && ns[i].matches(s) {
			return true
		}
	}
	return false
}

// Set is every configured application service.
type Set struct {
	regs    []*Registration
	byToken map[string]*Registration
	byID    map[string]*Registration
}

// Load reads and checks the registration files. Errors name the file and
// what to fix: a server must not start with a half-understood bridge.
func Load(paths []string, serverName string) (*Set, error) {
	s := &Set{byToken: map[string]*Registration{}, byID: map[string]*Registration{}}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("app_service_config_files: %w", err)
		}
		r, err := Parse(b, serverName)
		if err != nil {
			return nil, fmt.Errorf("app_service_config_files: %s: %w", p, err)
		}
		r.file = p
		if o := s.byID[r.ID]; o != nil {
			return nil, fmt.Errorf("app_service_config_files: %s and %s both have id %q; each appservice needs its own id", o.file, p, r.ID)
		}
		if o := s.byToken[r.ASToken]; o != nil {
			return nil, fmt.Errorf("app_service_config_files: %s and %s have the same as_token; each appservice needs its own", o.file, p)
		}
		s.regs = append(s.regs, r)
		s.byID[r.ID], s.byToken[r.ASToken] = r, r
	}
	return s, nil
}

// Parse reads one registration (YAML or JSON).
func Parse(b []byte, serverName string) (*Registration, error) {
	var r Registration
	if err := yaml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("not a registration file: %w", err)
	}
	var missing []string
	for _, f := range []struct{ key, value string }{{"id", r.ID}, {"as_token", r.ASToken}, {"hs_token", r.HSToken}, {"sender_localpart", r.SenderLocalpart}} {
		if f.value == "" {
			missing = append(missing, f.key)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if r.ASToken == r.HSToken {
		return nil, errors.New("as_token and hs_token are the same; generate two different secrets")
	}
	if r.Pushes() {
		u, err := url.Parse(*r.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("url %q is not an http(s) URL", *r.URL)
		}
	}
	r.sender = "@" + r.SenderLocalpart + ":" + serverName
	for _, ns := range []struct {
		name string
		list []Namespace
	}{{"users", r.Namespaces.Users}, {"aliases", r.Namespaces.Aliases}, {"rooms", r.Namespaces.Rooms}} {
		for i := range ns.list {
			if ns.list[i].Regex == "" {
				return nil, fmt.Errorf("namespaces.%s[%d] has no regex", ns.name, i)
			}
			// Anchored at the start only, as Synapse matches them (Python's
			// re.match), so registrations written for it mean the same here.
			re, err := regexp.Compile("^(?:" + ns.list[i].Regex + ")")
			if err != nil {
				return nil, fmt.Errorf("namespaces.%s[%d].regex %q: %w", ns.name, i, ns.list[i].Regex, err)
			}
			ns.list[i].re = re
		}
	}
	return &r, nil
}

// All returns the registrations in file order.
func (s *Set) All() []*Registration {
	if s == nil {
		return nil
	}
	return s.regs
}

// ByToken is the appservice whose as_token this is, or nil.
func (s *Set) ByToken(tok string) *Registration {
	if s == nil {
		return nil
	}
	return s.byToken[tok]
}

// ByID is the appservice with this id, or nil.
func (s *Set) ByID(id string) *Registration {
	if s == nil {
		return nil
	}
	return s.byID[id]
}

// ExclusiveUser is the appservice holding userID in an exclusive
// namespace (or as its sender), or nil: only it may register the user.
func (s *Set) ExclusiveUser(userID string) *Registration {
	for _, r := range s.All() {
		if userID == r.sender || anyMatch(r.Namespaces.Users, userID, true) {
			return r
		}
	}
	return nil
}

// ExclusiveAlias is the appservice holding the alias in an exclusive
// namespace, or nil: only it may create or delete the alias.
func (s *Set) ExclusiveAlias(alias string) *Registration {
	for _, r := range s.All() {
		if anyMatch(r.Namespaces.Aliases, alias, true) {
			return r
		}
	}
	return nil
}
