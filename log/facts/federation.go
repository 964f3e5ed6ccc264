package facts

import "encoding/json"

// ---- Federation infrastructure (kinds 500-529) ----

// ServerKeysFetched is a remote server's key response (GET
// /_matrix/key/v2/server, directly or through a notary), fetched and
// verified by the writer before appending; the serverkeys projection
// folds it so that signature checks on replay need no network.
type ServerKeysFetched struct {
	ServerName string `json:"server_name"`
	// Via is the notary that served the response; empty when fetched
	// from the server itself.
	Via string `json:"via,omitempty"`
	// ValidUntilTS is the response's valid_until_ts, capped by the writer
	// at fetch time + 7 days (spec: keys are used at most that long).
	ValidUntilTS int64 `json:"valid_until_ts"`
	// VerifyKeys: key ID -> unpadded base64 public key.
	VerifyKeys map[string]string `json:"verify_keys"`
	// OldVerifyKeys: key ID -> key and when it expired.
	OldVerifyKeys map[string]OldVerifyKey `json:"old_verify_keys,omitempty"`
	// Response is the signed response as received (a notary serves it).
	Response json.RawMessage `json:"response"`
}

// OldVerifyKey is a key a server no longer signs with.
type OldVerifyKey struct {
	Key       string `json:"key"`
	ExpiredTS int64  `json:"expired_ts"`
}

// FederationOutbound queues PDUs and EDUs for delivery to destinations.
// A PDU is named by its entry (Offset, or Back within the same batch); an
// EDU is carried inline in its federation form.
type FederationOutbound struct {
	Destinations []string       `json:"destinations"`
	Items        []OutboundItem `json:"items"`
}

// OutboundItem is one PDU or EDU to send.
type OutboundItem struct {
	// Offset of the KindPDU entry whose event is sent.
	Offset uint64 `json:"offset,omitempty"`
	// Back names the entry this many places before this one, when Offset
	// is 0: a writer appending an event and its delivery in one batch
	// (whose offsets are consecutive) does not know the event's offset.
	Back uint64 `json:"back,omitempty"`
	// EDU is an inline EDU (edu_type and content), when Offset is 0.
	EDU *OutboundEDU `json:"edu,omitempty"`
}

// OutboundEDU is an EDU as sent over federation.
type OutboundEDU struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// FederationDelivered: Destination acknowledged transaction TxnID, which
// held its queue up to and including item Through ("<offset>.<index>"
// key of the outbound queue). Items up to there leave the queue.
type FederationDelivered struct {
	Destination string `json:"destination"`
	TxnID       string `json:"txn_id"`
	Through     string `json:"through"`
}

// FederationDestinationSet marks a destination down (unreachable past the
// configured limit: no more retries) or up again (it contacted us, or a
// user acted towards it).
type FederationDestinationSet struct {
	Destination string `json:"destination"`
	Down        bool   `json:"down"`
	Reason      string `json:"reason,omitempty"`
}

// OpenIDTokenIssued records an OpenID token (client-server API
// request_token) that third parties check with federation's
// openid/userinfo. Only the token's SHA-256 (hex) reaches the log.
type OpenIDTokenIssued struct {
	UserID      string `json:"user_id"`
	TokenSHA256 string `json:"token_sha256"`
	// ExpiresAt is Unix ms, decided by the writer.
	ExpiresAt int64 `json:"expires_at"`
}

// AppserviceDelivered records that an application service acknowledged
// a transaction: every log entry up to Through was considered for it, and
// those it was interested in were delivered. Delivery resumes after
// Through, on this node or on a new leader.
type AppserviceDelivered struct {
	ID      string `json:"id"` // the registration's id
	TxnID   string `json:"txn_id,omitempty"`
	Through uint64 `json:"through"`
	Events  int    `json:"events,omitempty"`
}
