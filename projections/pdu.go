package projections

import (
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// DecodePDU reads a PDU fact. The payload is what facts encodes
// (encoding/json of facts.PDU: compact, its own field names), which a
// slicing reader walks in a fraction of json.Unmarshal's time; anything
// else (another field, another shape) goes to facts.Decode, so the result
// is always json.Unmarshal's. Every projection folding room events
// decodes each PDU entry: this is the one way to. f.Event aliases the
// payload (read-only, like the entry).
func DecodePDU(e englog.Entry) (facts.PDU, error) {
	if f, ok := fastDecodePDU(e.Payload); ok {
		return f, nil
	}
	var f facts.PDU
	err := facts.Decode(e, &f)
	return f, err
}

func fastDecodePDU(payload []byte) (f facts.PDU, ok bool) {
	err := canonicaljson.ObjectEach(payload, func(key, value []byte) error {
		var err error
		switch string(key) {
		case `"room_version"`:
			f.RoomVersion, err = canonicaljson.Unquote(value)
		case `"event"`:
			if !isObject(value) {
				return errUnexpected
			}
			f.Event = value
		case `"event_id"`:
			f.EventID, err = canonicaljson.Unquote(value)
		case `"txn"`:
			if string(value) == "null" {
				f.Txn = nil
				return nil
			}
			f.Txn, err = fastDecodeTxn(value)
		case `"rejected"`:
			f.Rejected, err = canonicaljson.Unquote(value)
		case `"soft_failed"`:
			f.SoftFailed, err = jsonBool(value)
		case `"outlier"`:
			f.Outlier, err = jsonBool(value)
		default:
			return errUnexpected
		}
		return err
	})
	return f, err == nil
}

func fastDecodeTxn(v []byte) (*facts.TxnRef, error) {
	if !isObject(v) {
		return nil, errUnexpected
	}
	t := &facts.TxnRef{}
	err := canonicaljson.ObjectEach(v, func(key, value []byte) error {
		var err error
		switch string(key) {
		case `"user_id"`:
			t.UserID, err = canonicaljson.Unquote(value)
		case `"device_id"`:
			t.DeviceID, err = canonicaljson.Unquote(value)
		case `"txn_id"`:
			t.TxnID, err = canonicaljson.Unquote(value)
		default:
			return errUnexpected
		}
		return err
	})
	return t, err
}

type unexpectedError struct{}

func (unexpectedError) Error() string { return "unexpected payload shape" }

var errUnexpected error = unexpectedError{}

func jsonBool(v []byte) (bool, error) {
	switch string(v) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errUnexpected
}

func isObject(v []byte) bool { return len(v) >= 2 && v[0] == '{' && v[len(v)-1] == '}' }
