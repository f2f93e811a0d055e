package main

import (
	"net/http"
	"testing"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The prewarm token reaches the --server host over https and nothing else:
// not another host, not the same host over http (a redirect to either),
// and it does not replace credentials a request already carries.
func TestPrewarmTokenStaysWithTheServer(t *testing.T) {
	var got string
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		got = r.Header.Get("Authorization")
		return &http.Response{StatusCode: 200, Body: http.NoBody, Request: r}, nil
	})}
	if err := withToken(client, "https://modproxy.example:8443", "mpx_secret"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		url, auth, want string
	}{
		{"https://modproxy.example:8443/example.com/m/@v/list", "", "Bearer mpx_secret"},
		{"http://modproxy.example:8443/example.com/m/@v/list", "", ""},
		{"https://elsewhere.example:8443/example.com/m/@v/list", "", ""},
		{"https://modproxy.example/example.com/m/@v/list", "", ""},
		{"https://modproxy.example:8443/example.com/m/@v/list", "Basic other", "Basic other"},
	} {
		req, _ := http.NewRequest("GET", c.url, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		got = ""
		if _, err := client.Do(req); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("%s (Authorization %q): sent %q, want %q", c.url, c.auth, got, c.want)
		}
	}
	if err := withToken(&http.Client{}, "http://modproxy.example", "mpx_secret"); err == nil {
		t.Error("a token was accepted for an http --server")
	}
}
