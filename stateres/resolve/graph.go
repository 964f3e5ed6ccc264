package resolve

import (
	"crypto/sha1"
	"encoding/json"
	"fmt"

	"github.com/engram-hs/engram/stateres"
)

// nodeID indexes graph.nodes. Working on dense integer indices instead of
// event ID strings keeps the set operations of state resolution (auth
// chains, differences, visited marks) to slices instead of string maps.
type nodeID = int32

// node is one event with the fields state resolution reads, copied out of
// the PDU once so that the hot loops do not go through an interface.
type node struct {
	pdu     stateres.PDU
	id      string
	key     stateres.StateKeyTuple
	isState bool
	sender  string
	ts      int64
	depth   int64
	auth    []nodeID

	// member holds the parts of an m.room.member content that state
	// resolution needs, parsed on first use (memberParsed).
	memberParsed bool
	member       memberContent
}

type memberContent struct {
	Membership       string `json:"membership"`
	ThirdPartyInvite *struct {
		Signed struct {
			Token string `json:"token"`
		} `json:"signed"`
	} `json:"third_party_invite"`
	AuthorisedVia string `json:"join_authorised_via_users_server"`
}

// graph is the part of the room's auth DAG that one resolution touches.
type graph struct {
	lookup   EventLookup
	rejected RejectionLookup
	index    map[string]nodeID
	nodes    []node
}

func newGraph(lookup EventLookup) *graph {
	g := &graph{lookup: lookup, index: make(map[string]nodeID)}
	g.rejected, _ = lookup.(RejectionLookup)
	return g
}

// load returns the node of the event with the given ID, loading it and its
// whole auth chain on first use.
func (g *graph) load(id string) (nodeID, error) {
	if n, ok := g.index[id]; ok {
		return n, nil
	}
	pdu, ok := g.lookup.Event(id)
	if !ok || pdu == nil {
		return 0, fmt.Errorf("resolve: event %s is not available; fetch the state sets' events and their full auth chains (federation /event_auth) before resolving", id)
	}
	n := nodeID(len(g.nodes))
	nd := node{pdu: pdu, id: id, sender: pdu.Sender(), ts: pdu.OriginServerTS(), depth: pdu.Depth()}
	if sk := pdu.StateKey(); sk != nil {
		nd.isState = true
		nd.key = stateres.StateKeyTuple{Type: pdu.Type(), StateKey: *sk}
	} else {
		nd.key.Type = pdu.Type()
	}
	g.nodes = append(g.nodes, nd)
	// The index is set before the auth events are loaded so that a (forged)
	// cycle in auth_events terminates here; the orderings report it.
	g.index[id] = n
	authIDs := pdu.AuthEventIDs()
	auth := make([]nodeID, 0, len(authIDs))
	for _, aid := range authIDs {
		a, err := g.load(aid)
		if err != nil {
			return 0, fmt.Errorf("%w (auth event of %s)", err, id)
		}
		auth = append(auth, a)
	}
	g.nodes[n].auth = auth
	return n, nil
}

func (g *graph) isRejected(n nodeID) bool {
	return g.rejected != nil && g.rejected.Rejected(g.nodes[n].id)
}

// memberOf returns the parsed membership content of an m.room.member event.
// Content that does not parse yields the zero value, which no rule treats as
// a membership, matching how the auth rules treat it.
func (g *graph) memberOf(n nodeID) *memberContent {
	nd := &g.nodes[n]
	if !nd.memberParsed {
		nd.memberParsed = true
		_ = json.Unmarshal(nd.pdu.Content(), &nd.member)
	}
	return &nd.member
}

// isPowerEvent reports whether an event is a power event (spec v2
// "Definitions", Power events): power levels, join rules, or a leave or ban
// that somebody sent about somebody else.
func (g *graph) isPowerEvent(n nodeID) bool {
	nd := &g.nodes[n]
	if !nd.isState {
		return false
	}
	switch nd.key.Type {
	case stateres.MRoomPowerLevels, stateres.MRoomJoinRules:
		return nd.key.StateKey == ""
	case stateres.MRoomMember:
		if nd.key.StateKey == nd.sender {
			return false
		}
		m := g.memberOf(n).Membership
		return m == "leave" || m == "ban"
	}
	return false
}

// authEventOfType returns the event among n's auth events with the given
// state key tuple, or -1.
func (g *graph) authEventOfType(n nodeID, key stateres.StateKeyTuple) nodeID {
	for _, a := range g.nodes[n].auth {
		if g.nodes[a].isState && g.nodes[a].key == key {
			return a
		}
	}
	return -1
}

func sha1Of(id string) [sha1.Size]byte { return sha1.Sum([]byte(id)) }
