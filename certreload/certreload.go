// Package certreload serves TLS with a certificate, key and client CA
// bundle that can be replaced while the server runs.
//
// The files are read at Reload; handshakes after it use the new pair
// through tls.Config.GetCertificate (and GetConfigForClient for the client
// CAs), so that open connections carry on and no listener is closed. A
// failed reload keeps the pair in force.
package certreload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// Files are the PEM files a Reloader reads.
type Files struct {
	Cert, Key string
	// ClientCA, when set, is a bundle of CAs whose client certificates
	// are verified (mutual TLS).
	ClientCA string
	// RequireClientCert refuses handshakes without a verified client
	// certificate; otherwise one is verified when a client sends it.
	RequireClientCert bool
}

// Reloader holds the TLS material in force.
type Reloader struct {
	files Files
	cur   atomic.Pointer[material]
}

type material struct {
	cert *tls.Certificate
	conf *tls.Config // per-handshake config when ClientCA is set
	leaf *x509.Certificate
}

// New reads the files once; it fails when they do not make a usable pair.
func New(files Files) (*Reloader, error) {
	if files.Cert == "" || files.Key == "" {
		return nil, errors.New("TLS needs both a certificate and a key file")
	}
	r := &Reloader{files: files}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Paths are the files the Reloader reads, for watching.
func (r *Reloader) Paths() []string {
	p := []string{r.files.Cert, r.files.Key}
	if r.files.ClientCA != "" {
		p = append(p, r.files.ClientCA)
	}
	return p
}

// Reload reads the files again and, when they are good, puts them in force.
func (r *Reloader) Reload() error {
	cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		return fmt.Errorf("load TLS key pair %s, %s: %w", r.files.Cert, r.files.Key, err)
	}
	m := &material{cert: &cert, leaf: cert.Leaf}
	if r.files.ClientCA != "" {
		pem, err := os.ReadFile(r.files.ClientCA)
		if err != nil {
			return fmt.Errorf("read client CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("client CA bundle %s: no PEM certificate in it", r.files.ClientCA)
		}
		m.conf = r.base()
		m.conf.Certificates = []tls.Certificate{cert}
		m.conf.ClientCAs = pool
		m.conf.ClientAuth = tls.VerifyClientCertIfGiven
		if r.files.RequireClientCert {
			m.conf.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	r.cur.Store(m)
	return nil
}

// Leaf is the certificate in force (for logs and tests).
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().leaf }

func (r *Reloader) base() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
	}
}

// TLSConfig is the server configuration: HTTP/2 and HTTP/1.1 by ALPN, the
// certificate in force at each handshake.
func (r *Reloader) TLSConfig() *tls.Config {
	c := r.base()
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return r.cur.Load().cert, nil
	}
	if r.files.ClientCA != "" {
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.cur.Load().conf, nil
		}
	}
	return c
}
