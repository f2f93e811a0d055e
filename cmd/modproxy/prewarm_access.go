package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/policy"
	"github.com/modproxy/modproxy/prewarm"
)

// policyBackend applies a module policy to a prewarm backend: a denied
// module version is neither fetched nor walked.
type policyBackend struct {
	prewarm.Backend
	p *policy.Policy
}

// errPolicyDenied marks a prewarm failure that the policy decided.
var errPolicyDenied = errors.New("denied by module policy")

func (b policyBackend) check(path, version string) error {
	if d := b.p.Check(path, version); !d.Allowed {
		return fmt.Errorf("%w: %s", errPolicyDenied, d.Message(path, version))
	}
	return nil
}

func (b policyBackend) Fetch(ctx context.Context, k cache.Key, needHash bool) (prewarm.Artifact, error) {
	if err := b.check(k.Path, k.Version); err != nil {
		return prewarm.Artifact{}, err
	}
	return b.Backend.Fetch(ctx, k, needHash)
}

func (b policyBackend) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	if err := b.check(path, version); err != nil {
		return nil, err
	}
	return b.Backend.GoMod(ctx, path, version)
}

func (b policyBackend) Latest(ctx context.Context, path string) (string, error) {
	if err := b.check(path, ""); err != nil {
		return "", err
	}
	v, err := b.Backend.Latest(ctx, path)
	if err == nil {
		err = b.check(path, v)
	}
	return v, err
}

// prewarmToken is the token prewarm --server sends: the first line of
// --token-file, else $MODPROXY_TOKEN; "" for none.
func prewarmToken(tokenFile string) (string, error) {
	if tokenFile != "" {
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("read --token-file: %w", err)
		}
		tok, _, _ := strings.Cut(string(data), "\n")
		if tok = strings.TrimSpace(tok); tok == "" {
			return "", usagef("--token-file %s is empty", tokenFile)
		}
		return tok, nil
	}
	return strings.TrimSpace(os.Getenv("MODPROXY_TOKEN")), nil
}

// bearerTransport adds a token to the https requests for one host only, so
// that it never reaches another server nor crosses the network in clear (a
// redirect elsewhere or to http, say).
type bearerTransport struct {
	base  http.RoundTripper
	host  string
	token string
}

func (t *bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" || r.URL.Host != t.host || r.Header.Get("Authorization") != "" {
		return t.base.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.base.RoundTrip(r)
}

// withToken makes client send token to serverURL's host.
func withToken(client *http.Client, serverURL, token string) error {
	if token == "" {
		return nil
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return usagef("invalid --server %q: %v", serverURL, err)
	}
	if u.Scheme != "https" {
		return usagef("--server %s: a token is sent over https only", serverURL)
	}
	client.Transport = &bearerTransport{base: client.Transport, host: u.Host, token: token}
	return nil
}
