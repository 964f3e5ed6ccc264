// Package federation serves the server-server API. Today it answers the
// server version and the signed key response; the federation wave (see
// ROADMAP) adds transactions, joins, backfill and the rest behind the same
// handler.
package federation

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/engram-hs/engram/stateres/signing"
)

// keyValidity is how long other servers may cache our key response
// (valid_until_ts); short, so a key rotation spreads within a day.
const keyValidity = 24 * time.Hour

// Handler serves the federation listener: the server version and the signed key
// response (server-server API, "Retrieving server keys").
func Handler(serverName, version string, key signing.Key, now func() time.Time) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/federation/v1/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, http.StatusOK, map[string]any{"server": map[string]string{"name": "Engram", "version": version}})
	})
	keys := func(w http.ResponseWriter, r *http.Request) {
		body, err := ServerKeys(serverName, key, now())
		if err != nil {
			writeJSONResponse(w, http.StatusInternalServerError, map[string]string{"errcode": "M_UNKNOWN", "error": "signing the key response failed"})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	}
	mux.HandleFunc("GET /_matrix/key/v2/server", keys)
	// Deprecated form with a key ID; the response is the same.
	mux.HandleFunc("GET /_matrix/key/v2/server/{keyID}", keys)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, http.StatusNotFound, map[string]string{"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
	})
	return mux
}

// ServerKeys is the signed response of GET /_matrix/key/v2/server.
func ServerKeys(serverName string, key signing.Key, now time.Time) ([]byte, error) {
	obj, err := json.Marshal(map[string]any{
		"server_name":     serverName,
		"valid_until_ts":  now.Add(keyValidity).UnixMilli(),
		"verify_keys":     map[string]any{key.ID: map[string]string{"key": signing.EncodeBase64(key.Public())}},
		"old_verify_keys": map[string]any{},
	})
	if err != nil {
		return nil, err
	}
	return signing.SignJSON(serverName, key.ID, key.Private, obj)
}

func writeJSONResponse(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
