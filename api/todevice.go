package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/engram-hs/engram/api/keys"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

func (s *Server) toDeviceRoutes() {
	s.client("PUT", "/sendToDevice/{eventType}/{txnId}", s.authed(s.sendToDevice))
}

// sendToDevice records one ToDeviceSent fact per local target user. The
// userdata projection puts each message in the addressed devices' inboxes
// and ignores a transaction it has already folded, so a retried PUT (even
// racing the first) delivers once.
func (s *Server) sendToDevice(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Messages == nil {
		return errMissingParam("messages is required")
	}
	typ, txn := r.PathValue("eventType"), r.PathValue("txnId")
	seen, err := s.userdataView().ToDeviceTxn(sess.UserID, sess.DeviceID, txn)
	if err != nil {
		return err
	}
	if seen {
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	var props []englog.Proposal
	remote := map[string]map[string]map[string]json.RawMessage{} // server -> user -> device -> content
	for _, user := range slices.Sorted(maps.Keys(req.Messages)) {
		if !strings.HasPrefix(user, "@") || !strings.Contains(user, ":") {
			return errInvalidParam("Invalid user ID %q in messages", user)
		}
		if !strings.HasSuffix(user, ":"+s.cfg.ServerName) {
			server := domainOf(user)
			for dev, content := range req.Messages[user] {
				if len(content) == 0 || content[0] != '{' {
					return errBadJSON("The message for %s device %s must be a JSON object", user, dev)
				}
			}
			if remote[server] == nil {
				remote[server] = map[string]map[string]json.RawMessage{}
			}
			remote[server][user] = req.Messages[user]
			continue
		}
		msgs := map[string]json.RawMessage{}
		for dev, content := range req.Messages[user] {
			if len(content) == 0 || content[0] != '{' {
				return errBadJSON("The message for %s device %s must be a JSON object", user, dev)
			}
			msgs[dev] = content
		}
		if len(msgs) == 0 {
			continue
		}
		props = append(props, facts.MustEncode(englog.KindToDeviceSent, facts.ToDeviceSent{
			Sender: sess.UserID, SenderDevice: sess.DeviceID, TxnID: txn, Type: typ, UserID: user, Messages: msgs,
		}))
	}
	// Remote devices: one m.direct_to_device EDU per server, queued for
	// federation's delivery queue. Its message_id is derived from the
	// transaction, so a retried PUT is the same message to the receiver.
	for _, server := range slices.Sorted(maps.Keys(remote)) {
		sum := sha256.Sum256([]byte(sess.UserID + "\x00" + sess.DeviceID + "\x00" + txn + "\x00" + server))
		p, ok, err := keys.FederationEDU(s.cfg.ServerName, []string{server}, "m.direct_to_device", map[string]any{
			"sender": sess.UserID, "type": typ, "message_id": hex.EncodeToString(sum[:16]), "messages": remote[server],
		})
		if err != nil {
			return err
		}
		if ok {
			props = append(props, p)
		}
	}
	if len(props) > 0 {
		if _, err := s.commit(r.Context(), []*projections.Handle{s.userdataH}, props...); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// toDeviceSection returns the device's pending to-device messages in
// (since, pos].
func (s *Server) toDeviceSection(sess *session, since, pos uint64) ([]map[string]any, error) {
	msgs, _, err := s.userdataView().ToDevice(sess.UserID, sess.DeviceID, since, pos)
	if err != nil {
		return nil, err
	}
	out := make([]map[string]any, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, map[string]any{"sender": m.Sender, "type": m.Type, "content": m.Content})
	}
	return out, nil
}

// ackToDevice: a since token is the device's acknowledgement of every
// to-device message up to it (the response that carried that token carried
// them). When some are still stored, the ack is recorded as a fact, so
// deleting them is part of the log and replays the same way.
func (s *Server) ackToDevice(ctx context.Context, sess *session, since uint64) error {
	if since == 0 {
		return nil
	}
	_, acked, err := s.userdataView().ToDevice(sess.UserID, sess.DeviceID, since, since)
	if err != nil || !acked {
		return err
	}
	if _, err := s.log.Append(ctx, facts.MustEncode(englog.KindToDeviceAcked, facts.ToDeviceAcked{UserID: sess.UserID, DeviceID: sess.DeviceID, UpTo: since})); err != nil {
		// Not fatal: the messages stay stored and the next sync
		// acknowledges them again.
		s.logger.Warn().Err(err).Str("user", sess.UserID).Msg("could not record a to-device acknowledgement")
	}
	return nil
}
