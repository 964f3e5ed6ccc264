package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

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
