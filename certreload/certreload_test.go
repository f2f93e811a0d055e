package certreload

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testpki"
)

// serve runs an HTTPS server with r's configuration that answers the
// verified client subject, if any.
func serve(t *testing.T, r *Reloader) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: r.TLSConfig(),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if len(req.TLS.VerifiedChains) > 0 {
				fmt.Fprint(w, req.TLS.PeerCertificates[0].Subject.String())
			}
		}),
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return "https://" + ln.Addr().String()
}

func client(ca *testpki.CA, cert *testpki.Pair) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	conf := &tls.Config{RootCAs: pool}
	if cert != nil {
		c, err := tls.X509KeyPair(cert.Cert, cert.Key)
		if err != nil {
			panic(err)
		}
		conf.Certificates = []tls.Certificate{c}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}}
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), nil
}

func TestReloadKeepsConnections(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "test CA")
	first := ca.Server(t)
	certFile, keyFile := first.Write(t, dir, "server")
	r, err := New(Files{Cert: certFile, Key: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, r)
	old := client(ca, nil)
	resp, _, err := get(t, old, url)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("protocol %s, want HTTP/2", resp.Proto)
	}
	if got := resp.TLS.PeerCertificates[0].SerialNumber; got.Cmp(first.Serial) != 0 {
		t.Fatalf("serial %v, want %v", got, first.Serial)
	}

	second := ca.Server(t)
	second.Write(t, dir, "server")
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	// The open connection carries on with the certificate it shook hands with.
	resp, _, err = get(t, old, url)
	if err != nil {
		t.Fatalf("open connection after reload: %v", err)
	}
	if got := resp.TLS.PeerCertificates[0].SerialNumber; got.Cmp(first.Serial) != 0 {
		t.Errorf("the open connection was replaced (serial %v)", got)
	}
	// A new connection gets the new certificate.
	resp, _, err = get(t, client(ca, nil), url)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.TLS.PeerCertificates[0].SerialNumber; got.Cmp(second.Serial) != 0 {
		t.Fatalf("new connection: serial %v, want %v", got, second.Serial)
	}

	// Half-written or mismatched files fail the reload and change nothing.
	for name, write := range map[string]func(){
		"garbage cert":   func() { testpki.WriteFile(t, certFile, []byte("not PEM")) },
		"mismatched key": func() { testpki.WriteFile(t, certFile, second.Cert); testpki.WriteFile(t, keyFile, ca.Server(t).Key) },
		"missing key":    func() { os.Remove(keyFile) },
	} {
		write()
		if err := r.Reload(); err == nil {
			t.Errorf("%s: reload succeeded", name)
		}
		resp, _, err = get(t, client(ca, nil), url)
		if err != nil || resp.TLS.PeerCertificates[0].SerialNumber.Cmp(second.Serial) != 0 {
			t.Errorf("%s: the certificate in force changed: %v", name, err)
		}
		second.Write(t, dir, "server")
	}
}

func TestClientCertificates(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA, otherCA := testpki.NewCA(t, "server CA"), testpki.NewCA(t, "client CA"), testpki.NewCA(t, "other CA")
	certFile, keyFile := serverCA.Server(t).Write(t, dir, "server")
	caFile := filepath.Join(dir, "clients.pem")
	testpki.WriteFile(t, caFile, clientCA.PEM)
	r, err := New(Files{Cert: certFile, Key: keyFile, ClientCA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, r)
	good := clientCA.Client(t, pkix.Name{CommonName: "bot", Organization: []string{"Corp"}})
	foreign := otherCA.Client(t, pkix.Name{CommonName: "intruder"})

	if _, body, err := get(t, client(serverCA, &good), url); err != nil || body != "CN=bot,O=Corp" {
		t.Fatalf("client certificate: %q, %v", body, err)
	}
	if _, body, err := get(t, client(serverCA, nil), url); err != nil || body != "" {
		t.Fatalf("no client certificate (allowed, unidentified): %q, %v", body, err)
	}
	// A client holding only a certificate of another CA does not send it
	// (the server asks for its CAs): it is not identified.
	if _, body, err := get(t, client(serverCA, &foreign), url); err == nil && body != "" {
		t.Fatalf("a certificate from another CA identified the client as %q", body)
	}
	// One that sends it anyway is refused in the handshake.
	pushy := client(serverCA, nil)
	fc, _ := tls.X509KeyPair(foreign.Cert, foreign.Key)
	pushy.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &fc, nil }
	if _, body, err := get(t, pushy, url); err == nil {
		t.Fatalf("a certificate of another CA was accepted (%q)", body)
	}
	// A reloaded bundle trusts the new CA.
	testpki.WriteFile(t, caFile, otherCA.PEM)
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, body, err := get(t, client(serverCA, &foreign), url); err != nil || body != "CN=intruder" {
		t.Fatalf("after CA reload: %q, %v", body, err)
	}
	testpki.WriteFile(t, caFile, []byte("no certificates here"))
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("empty bundle: %v", err)
	}
	// The failed reload left the bundle in force.
	if _, body, err := get(t, client(serverCA, &foreign), url); err != nil || body != "CN=intruder" {
		t.Fatalf("after a failed CA reload: %q, %v", body, err)
	}

	// Required client certificates: a client without one is refused.
	req, err := New(Files{Cert: certFile, Key: keyFile, ClientCA: caFile, RequireClientCert: true})
	if err == nil {
		t.Fatal("loaded an empty CA bundle")
	}
	testpki.WriteFile(t, caFile, clientCA.PEM)
	if req, err = New(Files{Cert: certFile, Key: keyFile, ClientCA: caFile, RequireClientCert: true}); err != nil {
		t.Fatal(err)
	}
	url = serve(t, req)
	if _, _, err := get(t, client(serverCA, nil), url); err == nil {
		t.Fatal("no client certificate accepted where one is required")
	}
	if _, body, err := get(t, client(serverCA, &good), url); err != nil || body != "CN=bot,O=Corp" {
		t.Fatalf("required client certificate: %q, %v", body, err)
	}
}
