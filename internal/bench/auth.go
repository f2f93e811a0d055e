package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/modproxy/modproxy/auth"
)

func init() {
	register(scenario{
		Name: "warm-auth", Order: 15, Timeout: 90 * time.Second,
		Desc: "warm .info/.mod at concurrency 16: server CPU with client authentication off, on, and on with policy and audit log",
		Run:  runWarmAuth,
	})
}

// authTransport sends a token with every request.
type authTransport struct {
	base  http.RoundTripper
	value string
}

func (t *authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", t.value)
	return t.base.RoundTrip(r)
}

func runWarmAuth(ctx context.Context, env *Env) ([]Result, error) {
	mods := smallModules("example.com/bench/auth", 100)
	up, err := env.Upstream(mods...)
	if err != nil {
		return nil, err
	}
	dir, err := env.TempDir("auth")
	if err != nil {
		return nil, err
	}
	// A realistic file: the token checked is one of 50 identities.
	f := &auth.File{}
	var token string
	for i := range 50 {
		tok, err := f.AddToken(fmt.Sprintf("ci-%d", i), []string{"public"}, auth.DefaultCost)
		if err != nil {
			return nil, err
		}
		token = tok
	}
	authFile := filepath.Join(dir, "auth.yaml")
	if err := f.WriteFile(authFile); err != nil {
		return nil, err
	}
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(`rules:
  - {name: bad, action: deny, paths: [example.com/bench/bad], versions: "<v1.2.3"}
  - {name: corp, action: allow, paths: [example.com]}
default: deny
`), 0o600); err != nil {
		return nil, err
	}
	type variant struct {
		name  string
		args  func() ([]string, error)
		token bool
	}
	admin := func(more ...string) func() ([]string, error) {
		return func() ([]string, error) {
			a, err := freeAddr()
			if err != nil {
				return nil, err
			}
			return append([]string{"--admin-listen", a, "--auth-file", authFile}, more...), nil
		}
	}
	variants := []variant{
		{"auth off", func() ([]string, error) { return nil, nil }, false},
		{"auth on", admin(), true},
		{"auth + policy + audit", admin("--policy-file", policyFile, "--audit-log", filepath.Join(dir, "audit.log")), true},
	}
	const conc = 16
	var res []Result
	var offCPU time.Duration
	for _, v := range variants {
		args, err := v.args()
		if err != nil {
			return res, err
		}
		srv, err := env.StartServer(ctx, up.URL(), args...)
		if err != nil {
			return res, fmt.Errorf("%s: %w", v.name, err)
		}
		c := newClient(conc)
		if v.token {
			c.Transport = &authTransport{base: c.Transport, value: "Bearer " + token}
		}
		urls := artifactURLs(srv.URL, mods, "info", "mod")
		// Filled through the same client, which carries the token.
		buf := make([]byte, 64<<10)
		for _, u := range urls {
			if _, err := fetch(ctx, c, u, buf); err != nil {
				return res, fmt.Errorf("%s: fill the store: %w", v.name, err)
			}
		}
		if _, err := runLoad(ctx, c, urls, conc, env.Opts.warmup, 0, 4<<10); err != nil {
			return res, fmt.Errorf("%s: warm-up: %w", v.name, err)
		}
		r, err := runLoad(ctx, c, urls, conc, env.Opts.duration, srv.Pid, 4<<10)
		c.CloseIdleConnections()
		if err != nil {
			return res, fmt.Errorf("%s: %w", v.name, err)
		}
		if r.Errors > 0 {
			return res, fmt.Errorf("%s: %d of %d requests failed, first: %w", v.name, r.Errors, r.Errors+r.Requests, r.FirstErr)
		}
		cpu := r.cpuPerReq()
		note := ""
		if v.name == "auth off" {
			offCPU = cpu
		} else if offCPU > 0 {
			note = fmt.Sprintf("%+.1f µs/req vs auth off", us(cpu-offCPU))
		}
		fmt.Fprintf(os.Stderr, "   %-22s %8.0f req/s  p99 %6.2f ms  server CPU %5.1f µs/req %s\n", v.name, r.perSec(), ms(r.pct(99)), us(cpu), note)
		res = append(res,
			Result{Metric: "server CPU per request, " + v.name, Value: us(cpu), Unit: "µs", Note: note},
			Result{Metric: "throughput, " + v.name, Value: r.perSec(), Unit: "req/s"},
		)
		env.stopServers()
	}
	return res, nil
}
