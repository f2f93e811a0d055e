package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestAccessConfigTraps: half-given TLS settings and unreadable or broken
// files stop the server at start, never serve with less protection.
func TestAccessConfigTraps(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badAuth := write("bad-auth.yaml", "identities:\n  - {name: ci, token_hash: mpx_plaintext, scopes: [public]}\n")
	typoAuth := write("typo-auth.yaml", "anonymus: [public]\n")
	badPolicy := write("bad-policy.yaml", "rules:\n  - {name: x, action: deny, paths: [a.example], versions: '>=1.0'}\n")
	notPEM := write("cert.pem", "not a certificate")
	base := accessConfig{reloadInterval: time.Second}
	for name, tc := range map[string]struct {
		mod  func(*accessConfig)
		want string
	}{
		"cert without key":           {func(c *accessConfig) { c.tlsCert = notPEM }, "go together"},
		"key without cert":           {func(c *accessConfig) { c.tlsKey = notPEM }, "go together"},
		"client CA without TLS":      {func(c *accessConfig) { c.tlsClientCA = notPEM }, "needs --tls-cert"},
		"zero reload interval":       {func(c *accessConfig) { c.reloadInterval = 0 }, "--reload-interval"},
		"bad TLS pair":               {func(c *accessConfig) { c.tlsCert, c.tlsKey = notPEM, notPEM }, "load TLS key pair"},
		"plain token in file":        {func(c *accessConfig) { c.authFile = badAuth }, "token_id"},
		"typo in auth file":          {func(c *accessConfig) { c.authFile = typoAuth }, "anonymus"},
		"missing auth file":          {func(c *accessConfig) { c.authFile = filepath.Join(dir, "none.yaml") }, "no such file"},
		"bad version in policy":      {func(c *accessConfig) { c.policyFile = badPolicy }, "not a semantic version"},
		"audit log in a missing dir": {func(c *accessConfig) { c.auditLog = filepath.Join(dir, "no", "audit.log") }, "audit log"},
	} {
		t.Run(name, func(t *testing.T) {
			c := base
			tc.mod(&c)
			a, err := newAccessLayer(context.Background(), c, http.NotFoundHandler(), func(string) bool { return false },
				prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err == nil {
				a.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestEmptyAccessFlagsAreErrors(t *testing.T) {
	for _, flag := range []string{"tls-cert", "tls-key", "tls-client-ca", "auth-file", "policy-file", "audit-log"} {
		c := accessConfig{reloadInterval: time.Second}
		err := c.validate(func(f string) bool { return f == flag })
		if err == nil || !strings.Contains(err.Error(), "--"+flag+" (or MODPROXY_") {
			t.Errorf("%s set empty: %v", flag, err)
		}
	}
	t.Setenv("MODPROXY_AUTH_FILE", " ")
	if err := (accessConfig{reloadInterval: time.Second}).validate(func(string) bool { return false }); err == nil || !strings.Contains(err.Error(), "MODPROXY_AUTH_FILE") {
		t.Errorf("empty MODPROXY_AUTH_FILE: %v", err)
	}
	os.Unsetenv("MODPROXY_AUTH_FILE")
	if err := (accessConfig{reloadInterval: time.Second}).validate(func(string) bool { return false }); err != nil {
		t.Errorf("nothing set: %v", err)
	}
}
