package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"time"

	"github.com/engram-hs/engram/stateres/signing"
)

// keyValidity is how long other servers may cache our key response
// (valid_until_ts); short, so a key rotation spreads within a day.
const keyValidity = 24 * time.Hour

// federationHandler serves what the federation listener answers until the
// federation package takes over: the server version and the signed key
// response (server-server API, "Retrieving server keys").
func federationHandler(serverName string, key signing.Key, now func() time.Time) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/federation/v1/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, http.StatusOK, map[string]any{"server": map[string]string{"name": "Engram", "version": version}})
	})
	keys := func(w http.ResponseWriter, r *http.Request) {
		body, err := serverKeys(serverName, key, now())
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

// serverKeys is the signed response of GET /_matrix/key/v2/server.
func serverKeys(serverName string, key signing.Key, now time.Time) ([]byte, error) {
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

// federationTLS returns the federation listener's TLS configuration: the
// configured certificate, else one issued from the configured CA, else a
// self-signed one. how says which, for the log.
func federationTLS(cfg Config, now time.Time) (*tls.Config, string, error) {
	var cert tls.Certificate
	var how string
	switch {
	case cfg.FederationTLSCert != "":
		c, err := tls.LoadX509KeyPair(cfg.FederationTLSCert, cfg.FederationTLSKey)
		if err != nil {
			return nil, "", fmt.Errorf("federation_tls_cert/federation_tls_key: %w", err)
		}
		cert, how = c, "from federation_tls_cert"
	case cfg.FederationTLSCACert != "":
		ca, caKey, err := loadCA(cfg.FederationTLSCACert, cfg.FederationTLSCAKey)
		if err != nil {
			return nil, "", err
		}
		c, err := issueCert(serverHost(cfg.ServerName), ca, caKey, now)
		if err != nil {
			return nil, "", err
		}
		cert, how = c, "issued by federation_tls_ca_cert"
	default:
		c, err := issueCert(serverHost(cfg.ServerName), nil, nil, now)
		if err != nil {
			return nil, "", err
		}
		cert, how = c, "self-signed (set federation_tls_cert or federation_tls_ca_cert for others to trust it)"
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, how, nil
}

func loadCA(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("federation_tls_ca_cert/federation_tls_ca_key: %w", err)
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("federation_tls_ca_cert: %w", err)
	}
	if !ca.IsCA {
		return nil, nil, errors.New("federation_tls_ca_cert is not a CA certificate (basicConstraints CA:TRUE)")
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("federation_tls_ca_key: unsupported key type")
	}
	return ca, signer, nil
}

// issueCert makes a one-year certificate for host, signed by ca (or by
// itself when ca is nil).
func issueCert(host string, ca *x509.Certificate, caKey crypto.Signer, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issuing the federation certificate: %w", err)
	}
	chain := [][]byte{der}
	if ca != nil {
		chain = append(chain, ca.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key}, nil
}
