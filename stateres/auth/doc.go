// Package auth implements the authorisation rules of Matrix room versions 1
// to 12 (content/rooms/v1.md .. v12.md, "Authorisation rules"), as pure
// functions of an event and the state it is checked against.
//
// A server applies the rules several times to one incoming PDU (spec,
// server-server API, "Checks performed on receipt of a PDU"):
//
//  4. against the event's own auth_events: CheckWithAuthEvents(ev, listed,
//     create, isRejected), which is CheckAuthEventsList (the list itself:
//     duplicates, selection, rejected entries, room IDs) followed by Check
//     against NewAuthEvents of the list; a failure rejects the event;
//  5. against the state before the event (the resolved state of its
//     prev_events): Check(ev, stateBefore); a failure rejects the event;
//  6. against the current state of the room: CheckSoftFail(ev, current); a
//     failure soft-fails the event: it is kept and takes part in state
//     resolution, but is not served to clients nor used as a prev event.
//
// Events created locally are checked with Check against the current state
// before they are proposed to the log; state resolution's iterative auth
// checks use Check against the partially resolved state.
//
// Room version 12 takes the create event out of auth_events: the room ID
// is derived from it. Check always reads the create event through
// AuthEvents.Create(), so callers put the room's create event (which they
// find from the room ID) into the AuthEvents they pass, in every version.
// For a set built from an event's auth_events in v12, add the create event
// to the slice given to NewAuthEvents.
//
// Failures are *Rejection values naming the clause that failed with a
// stable, version-independent name (the spec renumbers its rules between
// versions); Rejection.Rule gives the number in the event's room version.
package auth
