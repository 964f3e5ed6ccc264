package stateres

import (
	"bytes"
	"encoding/base64"
	"fmt"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// ParseTrustedEvent parses a PDU read back from the log, whose event ID the
// writer derived (and recorded beside it) before appending it. The log is
// the truth and its PDUs were parsed and checked before they were
// appended, so re-deriving the ID on every fold (canonicalising the JSON,
// redacting it and hashing it: most of ParseEvent's cost) proves nothing
// new; replays of the log parse every PDU again, and that cost was a
// sixth of a rooms rebuild.
//
// It still checks the PDU format (a log written by a buggy build fails the
// same way ParseEvent fails). eventID "" (an entry written before writers
// recorded it) and the v1/v2 formats, whose IDs are not hashes, take
// ParseEvent's path. The accessors, ReferenceHash included, return what
// ParseEvent would return for the same event.
func ParseTrustedEvent(version *RoomVersion, stored []byte, eventID string) (*Event, error) {
	if eventID == "" || version == nil || version.EventIDFormat == EventIDServerAssigned {
		return ParseEvent(version, stored)
	}
	canon := stored
	// Writers store canonical JSON, but the log's JSON encoding of the
	// payload escapes <, > and & (and U+2028/9) as \uXXXX, which canonical
	// JSON writes literally; canonical JSON uses \u only for control
	// characters, so JSON without any \u needs no canonicalising.
	if bytes.Contains(stored, []byte(`\u`)) {
		var err error
		if canon, err = canonicaljson.Canonicalize(stored, version.StrictCanonicalJSON); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
		}
	}
	return parseCanonicalWithID(version, canon, eventID)
}

// adoptEventID sets the event ID and the reference hash it encodes, for a
// room version whose event IDs are reference hashes.
func (e *Event) adoptEventID(id string) error {
	enc := base64.RawURLEncoding.Strict()
	if e.version.EventIDFormat == EventIDBase64 {
		enc = base64.RawStdEncoding.Strict()
	}
	if len(id) < 2 || id[0] != '$' || enc.DecodedLen(len(id)-1) != len(e.referenceHash) {
		return invalid("event ID %q is not a reference hash of room version %s", id, e.version.ID)
	}
	if _, err := enc.Decode(e.referenceHash[:], []byte(id[1:])); err != nil {
		return invalid("event ID %q is not a reference hash of room version %s: %v", id, e.version.ID, err)
	}
	e.eventID = id
	return nil
}
