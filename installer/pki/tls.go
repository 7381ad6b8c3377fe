package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// TLSOptions configures a castellan TLS endpoint.
type TLSOptions struct {
	// Certificate is this side's certificate and key (the key may be a TPM
	// signer: any crypto.Signer). Required for a server; for a client it is
	// the client certificate (mutual TLS) and may be nil.
	Certificate *tls.Certificate
	// Roots verifies the peer's chain. Required.
	Roots *x509.CertPool
	// ServerName the client expects in the server's certificate.
	ServerName string
	// RequireClientCert makes a server demand and verify a client
	// certificate (mutual TLS).
	RequireClientCert bool
	// Peer, when set, also checks the peer's leaf as a castellan node
	// identity (cluster, revocation, TPM requirement) after the chain
	// verification.
	Peer *Verifier
	// AllowTLS12 lowers the minimum version to TLS 1.2 for a peer that
	// cannot speak 1.3 (and then only ECDHE with AEAD ciphers). Off by
	// default: castellan serves and dials TLS 1.3 only.
	AllowTLS12 bool
}

// tls12Suites are the only TLS 1.2 suites offered when AllowTLS12 is set:
// forward secret, AEAD (RFC 5289, RFC 7905).
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

func base(o TLSOptions) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13}
	if o.AllowTLS12 {
		c.MinVersion = tls.VersionTLS12
		c.CipherSuites = tls12Suites
	}
	if o.Certificate != nil {
		c.Certificates = []tls.Certificate{*o.Certificate}
	}
	return c
}

// ServerTLS returns a server configuration: TLS 1.3 only (1.2 with
// AllowTLS12), this side's certificate, and with RequireClientCert mutual
// TLS verified against Roots (and Peer, when set, for node identities).
func ServerTLS(o TLSOptions) (*tls.Config, error) {
	if o.Certificate == nil {
		return nil, errors.New("pki: a TLS server needs a certificate")
	}
	c := base(o)
	if o.RequireClientCert {
		if o.Roots == nil {
			return nil, errors.New("pki: a TLS server that requires client certificates needs Roots")
		}
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = o.Roots
		if o.Peer != nil {
			c.VerifyConnection = peerCheck(o.Peer, x509.ExtKeyUsageClientAuth)
		}
	}
	return c, nil
}

// ClientTLS returns a client configuration: TLS 1.3 only (1.2 with
// AllowTLS12), the server verified against Roots under ServerName (and Peer,
// when set), and this side's certificate for mutual TLS when given.
func ClientTLS(o TLSOptions) (*tls.Config, error) {
	if o.Roots == nil {
		return nil, errors.New("pki: a TLS client needs Roots to verify the server")
	}
	if o.ServerName == "" {
		return nil, errors.New("pki: a TLS client needs the server name to verify")
	}
	c := base(o)
	c.RootCAs = o.Roots
	c.ServerName = o.ServerName
	if o.Peer != nil {
		c.VerifyConnection = peerCheck(o.Peer, x509.ExtKeyUsageServerAuth)
	}
	return c, nil
}

func peerCheck(v *Verifier, eku x509.ExtKeyUsage) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("pki: peer sent no certificate")
		}
		if _, err := v.VerifyNode(cs.PeerCertificates[0], eku); err != nil {
			return fmt.Errorf("pki: peer refused: %w", err)
		}
		return nil
	}
}
