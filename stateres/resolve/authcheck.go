package resolve

import (
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// defaultAuthCheck is the authorisation check Resolve uses: the rules of
// package auth against exactly the events state resolution selected. In
// room version 12 that list carries the room's create event, which the
// resolver finds from the room ID (see resolver.allowed).
func defaultAuthCheck(ev stateres.PDU, authEvents []stateres.PDU) error {
	return auth.Check(ev, auth.NewAuthEvents(ev.Version(), authEvents))
}
