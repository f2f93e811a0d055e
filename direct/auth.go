package direct

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// credentials resolves the HTTP headers to send to a URL, following the
// go command's GOAUTH rules (go help gitauth): "off", "netrc", "git DIR"
// and "command ..." methods separated by ';', earlier ones winning;
// credentials are looked up by URL prefix (host, then deeper paths win).
// Headers are never logged or returned to clients.
//
// Unlike the go command, which runs for seconds, modproxy runs for months
// while tokens are rotated and netrc files rewritten under it. What the
// methods answer is therefore kept for credentialTTL only, and a URL whose
// server refuses the credentials sent (see forget) asks the methods again,
// at most once per credentialRetry.
type credentials struct {
	methods []authMethod
	netrc   string // netrc file for the netrc method
	now     func() time.Time

	mu    sync.Mutex
	cache map[string]credEntry // prefix (host/path, no scheme) -> headers
	// ran is when the per-URL methods last ran, by URL key; forget deletes
	// a key so that the next lookup runs them again.
	ran map[string]time.Time
}

// credEntry is one prefix's headers and when a method produced them.
type credEntry struct {
	h  http.Header
	at time.Time
}

const (
	// credentialTTL bounds how long an answer of the GOAUTH methods is
	// used: a token removed from a netrc file or no longer printed by a
	// command stops being sent within it.
	credentialTTL = 5 * time.Minute
	// credentialRetry is the shortest time between two runs of the
	// methods for one URL after its server refused what they gave: a
	// wrong password does not run a GOAUTH command per request.
	credentialRetry = 10 * time.Second
)

type authMethod struct {
	kind string   // netrc, git, command
	args []string // git: [dir]; command: argv
}

// parseGOAUTH parses a GOAUTH value. Empty means "netrc", the go
// command's default.
func parseGOAUTH(s, netrcPath string) (*credentials, error) {
	c := &credentials{netrc: netrcPath, now: time.Now, cache: map[string]credEntry{}, ran: map[string]time.Time{}}
	s = strings.TrimSpace(s)
	if s == "" {
		s = "netrc"
	}
	cmds := strings.Split(s, ";")
	for _, cmd := range cmds {
		words := strings.Fields(cmd)
		if len(words) == 0 {
			return nil, fmt.Errorf("GOAUTH %q has an empty command", s)
		}
		switch words[0] {
		case "off":
			if len(cmds) != 1 {
				return nil, fmt.Errorf("GOAUTH=off cannot be combined with other methods (%q)", s)
			}
			return c, nil
		case "netrc":
			if len(words) != 1 {
				return nil, fmt.Errorf("GOAUTH method netrc takes no arguments (%q)", cmd)
			}
			c.methods = append(c.methods, authMethod{kind: "netrc"})
		case "git":
			if len(words) != 2 || !filepath.IsAbs(words[1]) {
				return nil, fmt.Errorf("GOAUTH method git needs an absolute path to a git working directory (%q)", cmd)
			}
			if fi, err := os.Stat(words[1]); err != nil || !fi.IsDir() {
				return nil, fmt.Errorf("GOAUTH method git: %s is not a directory", words[1])
			}
			c.methods = append(c.methods, authMethod{kind: "git", args: words[1:]})
		default:
			argv, err := splitQuoted(cmd)
			if err != nil {
				return nil, fmt.Errorf("GOAUTH command %q: %v", cmd, err)
			}
			c.methods = append(c.methods, authMethod{kind: "command", args: argv})
		}
	}
	return c, nil
}

// CheckGOAUTH reports whether s is valid GOAUTH syntax.
func CheckGOAUTH(s string) error {
	_, err := parseGOAUTH(s, "")
	return err
}

// defaultNetrc is the go command's netrc file: $NETRC, else ~/.netrc.
func defaultNetrc() string {
	if env := os.Getenv("NETRC"); env != "" {
		return env
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".netrc")
}

// headerFor returns the credentials for rawURL (nil: none). Methods run
// in reverse order so that the first listed method's answer wins, as with
// the go command. They run again for a URL whose last run is older than
// credentialTTL, or that forget marked refused since.
func (c *credentials) headerFor(ctx context.Context, rawURL string) http.Header {
	key, ok := c.key(rawURL)
	if !ok {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	last, ran := c.ran[key]
	if !ran || now.Sub(last) >= credentialTTL {
		c.ran[key] = now
		c.run(ctx, key, now)
		if ctx.Err() != nil {
			delete(c.ran, key) // cut off: ask again next time
		}
	}
	for p := key; ; {
		if e, ok := c.cache[p]; ok && now.Sub(e.at) < credentialTTL {
			return e.h.Clone()
		}
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			return nil
		}
		p = p[:i]
	}
}

// key is rawURL's lookup key: host and path, no scheme or trailing slash.
func (c *credentials) key(rawURL string) (string, bool) {
	if c == nil || len(c.methods) == 0 {
		return "", false
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return "", false
	}
	return u.Host + strings.TrimSuffix(u.Path, "/"), true
}

// run runs the methods for key, under c.mu.
func (c *credentials) run(ctx context.Context, key string, now time.Time) {
	for _, m := range slices.Backward(c.methods) {
		switch m.kind {
		case "netrc":
			for _, l := range slices.Backward(readNetrc(c.netrc)) {
				h := http.Header{}
				h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(l.login+":"+l.password)))
				c.cache[l.machine] = credEntry{h, now}
			}
		case "git":
			if prefix, h, err := gitCredential(ctx, m.args[0], "https://"+key); err == nil {
				c.cache[prefix] = credEntry{h, now}
			}
		case "command":
			if creds, err := authCommand(ctx, m.args, "https://"+key); err == nil {
				for p, h := range creds {
					c.cache[p] = credEntry{h, now}
				}
			}
		}
	}
}

// forget records that the server of rawURL refused the credentials sent
// with a request (401 or 403, or git's authentication failure). The next
// request for it runs the methods again, unless they ran less than
// credentialRetry ago. It reports whether that next request will.
func (c *credentials) forget(rawURL string) bool {
	key, ok := c.key(rawURL)
	if !ok {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if last, ran := c.ran[key]; ran && c.now().Sub(last) < credentialRetry {
		return false
	}
	delete(c.ran, key)
	return true
}

// apply adds credentials to a discovery or proxy request. As with the go
// command, credentials go only over HTTPS.
func (c *credentials) apply(req *http.Request) {
	if req.URL.Scheme != "https" {
		return
	}
	for k, vs := range c.headerFor(req.Context(), req.URL.String()) {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
}

// do sends req (a GET without a body) with its credentials. A server that
// answers 401 or 403 gets the request once more with credentials looked
// up again, where forget allows it: a token rotated since it was cached
// costs one refused request, not credentialTTL of them.
func (c *credentials) do(client *http.Client, req *http.Request) (*http.Response, error) {
	plain := req.Clone(req.Context())
	c.apply(req)
	resp, err := client.Do(req)
	if err != nil || req.URL.Scheme != "https" ||
		(resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden) ||
		!c.forget(req.URL.String()) {
		return resp, err
	}
	resp.Body.Close()
	c.apply(plain)
	return client.Do(plain)
}

type netrcLine struct{ machine, login, password string }

// readNetrc parses a netrc file as the go command does; a missing file
// has no entries.
func readNetrc(path string) []netrcLine {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var nrc []netrcLine
	var l netrcLine
	inMacro := false
	for line := range strings.SplitSeq(string(data), "\n") {
		if inMacro {
			if line == "" {
				inMacro = false
			}
			continue
		}
		f := strings.Fields(line)
		i := 0
		for ; i < len(f)-1; i += 2 {
			switch f[i] {
			case "machine":
				l = netrcLine{machine: f[i+1]}
			case "login":
				l.login = f[i+1]
			case "password":
				l.password = f[i+1]
			case "macdef":
				inMacro = true
			}
			if l.machine != "" && l.login != "" && l.password != "" {
				nrc = append(nrc, l)
				l = netrcLine{}
			}
		}
		if i < len(f) && f[i] == "default" {
			break
		}
	}
	return nrc
}

// gitCredential asks "git credential fill" in dir for rawURL.
func gitCredential(ctx context.Context, dir, rawURL string) (string, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", "credential", "fill")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	cmd.Stdin = strings.NewReader("url=" + rawURL + "\n")
	out, err := cmd.Output()
	if err != nil {
		return "", nil, fmt.Errorf("git credential fill: %w", err)
	}
	prefix := new(url.URL)
	var user, pass string
	for line := range strings.SplitSeq(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "protocol":
			prefix.Scheme = v
		case "host":
			prefix.Host = v
		case "path":
			prefix.Path = v
		case "username":
			user = v
		case "password":
			pass = v
		case "url":
			if u, err := url.ParseRequestURI(v); err == nil {
				prefix = u
			}
		}
	}
	p := prefix.String()
	if p == "" || !strings.HasPrefix(rawURL, p) {
		return "", nil, errors.New("git credential fill answered for another URL")
	}
	h := http.Header{}
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	return strings.TrimSuffix(strings.TrimPrefix(p, "https://"), "/"), h, nil
}

// authCommand runs a GOAUTH command with rawURL and parses its answer:
// blocks of URL lines, a blank line, header lines, a blank line.
func authCommand(ctx context.Context, argv []string, rawURL string) (map[string]http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], rawURL)...)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("GOAUTH command %s: %w", argv[0], err)
	}
	return parseUserAuth(string(out))
}

func parseUserAuth(data string) (map[string]http.Header, error) {
	creds := map[string]http.Header{}
	for data != "" {
		var line string
		var ok bool
		var urls []string
		for {
			line, data, ok = strings.Cut(data, "\n")
			if !ok {
				return nil, errors.New("invalid format: missing empty line after URLs")
			}
			if line == "" {
				break
			}
			u, err := url.ParseRequestURI(line)
			if err != nil {
				return nil, fmt.Errorf("could not parse URL: %v", err)
			}
			urls = append(urls, u.String())
		}
		h := http.Header{}
		for {
			line, data, ok = strings.Cut(data, "\n")
			if !ok {
				return nil, errors.New("invalid format: missing empty line after headers")
			}
			if line == "" {
				break
			}
			name, value, ok := strings.Cut(line, ": ")
			value = strings.TrimSpace(value)
			if !ok || name == "" || strings.ContainsAny(name, " \t\r\n:") || strings.ContainsAny(value, "\r\n") {
				return nil, errors.New("invalid format: invalid header line")
			}
			h.Add(name, value)
		}
		for _, p := range urls {
			creds[strings.TrimSuffix(strings.TrimPrefix(p, "https://"), "/")] = h.Clone()
		}
	}
	return creds, nil
}

// splitQuoted splits a command line on spaces, honouring single and
// double quotes (cmd/internal/quoted).
func splitQuoted(s string) ([]string, error) {
	var f []string
	for len(s) > 0 {
		for len(s) > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == '\n' || s[0] == '\r') {
			s = s[1:]
		}
		if len(s) == 0 {
			break
		}
		if s[0] == '"' || s[0] == '\'' {
			quote := s[0]
			s = s[1:]
			i := 0
			for i < len(s) && s[i] != quote {
				i++
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated %c string", quote)
			}
			f = append(f, s[:i])
			s = s[i+1:]
			continue
		}
		i := 0
		for i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
			i++
		}
		f = append(f, s[:i])
		s = s[i:]
	}
	if len(f) == 0 {
		return nil, errors.New("empty command")
	}
	return f, nil
}

// forgetRepo is forget for the credentials gitAuthConfig found for repo.
// Credentials in repo's URL itself are not looked up, so not again either.
func (c *credentials) forgetRepo(repo string) bool {
	u, err := url.Parse(repo)
	if err != nil || u.User != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return false
	}
	u.Scheme = "https"
	return c.forget(u.String())
}

// gitAuthConfig turns the credentials for repo into git configuration:
// URL-scoped extra headers, passed through the environment, never argv.
// Plain-HTTP repositories (allowed only with --insecure) get them too, as
// git itself would send a netrc's.
func (c *credentials) gitAuthConfig(ctx context.Context, repo string) []string {
	u, err := url.Parse(repo)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return nil
	}
	var cfg []string
	scope := u.Scheme + "://" + u.Host + "/"
	if u.User != nil {
		// Userinfo in a discovered URL is used, never stored or passed on.
		pass, _ := u.User.Password()
		cfg = append(cfg, "http."+scope+".extraHeader=Authorization: Basic "+base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass)))
		return cfg
	}
	lookup := *u
	lookup.Scheme = "https"
	for k, vs := range c.headerFor(ctx, lookup.String()) {
		for _, v := range vs {
			cfg = append(cfg, "http."+scope+".extraHeader="+k+": "+v)
		}
	}
	return cfg
}
