package testupstream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"time"
)

// TLSHost is the host name NewTLS's certificate is valid for (besides
// localhost and 127.0.0.1). Tests make it resolve to 127.0.0.1 with their
// own DNS server, so that clients reach the upstream by name over TLS.
const TLSHost = "upstream.test"

// NewTLS starts a fake upstream on 127.0.0.1 serving mods over HTTPS
// (HTTP/1.1 and HTTP/2) with a fresh self-signed certificate valid for
// TLSHost, localhost and 127.0.0.1; CertPEM returns it for clients to trust
// (SSL_CERT_FILE). URL is https://127.0.0.1:port; HostURL names TLSHost.
func NewTLS(mods ...Module) (*Server, error) {
	s, err := newServer(mods)
	if err != nil {
		return nil, err
	}
	cert, certPEM, err := selfSigned(TLSHost, "localhost")
	if err != nil {
		return nil, err
	}
	s.certPEM = certPEM
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.EnableHTTP2 = true
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.srv.StartTLS()
	return s, nil
}

// CertPEM is the PEM-encoded certificate of a NewTLS server (nil otherwise).
func (s *Server) CertPEM() []byte { return s.certPEM }

// HostURL is the base URL with the host replaced by host (e.g. TLSHost),
// keeping the scheme and port.
func (s *Server) HostURL(host string) string {
	_, port, _ := net.SplitHostPort(s.srv.Listener.Addr().String())
	scheme := "http"
	if s.srv.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// selfSigned makes an ECDSA P-256 certificate for names and 127.0.0.1.
func selfSigned(names ...string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("testupstream: key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: names[0]},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed: it is its own root in SSL_CERT_FILE
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("testupstream: certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, certPEM, nil
}
