package direct

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"golang.org/x/mod/module"
)

// repoRoot is where a module path's code lives (the go command's
// vcs.RepoRoot).
type repoRoot struct {
	Repo   string // repository URL with scheme, or a proxy base URL for vcs "mod"
	Root   string // import path of the repository root
	SubDir string // subdirectory within the repository (4-field go-import)
	VCS    string // "git", "mod", or another VCS (refused)
}

// vcsPath is one of the go command's hard-coded hosting patterns.
type vcsPath struct {
	pathPrefix     string
	re             *regexp.Regexp
	repo           string
	vcs            string
	noVCSSuffix    bool
	schemelessRepo bool
}

// knownHosts are the go command's vcsPaths (cmd/go/internal/vcs). The
// pattern table must stay in step with the go command's for parity.
var knownHosts = []*vcsPath{
	{pathPrefix: "github.com", re: regexp.MustCompile(`^(?P<root>github\.com/[\w.\-]+/[\w.\-]+)(/[\w.\-]+)*$`), vcs: "git", repo: "https://{root}", noVCSSuffix: true},
	{pathPrefix: "bitbucket.org", re: regexp.MustCompile(`^(?P<root>bitbucket\.org/(?P<bitname>[\w.\-]+/[\w.\-]+))(/[\w.\-]+)*$`), vcs: "git", repo: "https://{root}", noVCSSuffix: true},
	{pathPrefix: "hub.jazz.net/git", re: regexp.MustCompile(`^(?P<root>hub\.jazz\.net/git/[a-z0-9]+/[\w.\-]+)(/[\w.\-]+)*$`), vcs: "git", repo: "https://{root}", noVCSSuffix: true},
	{pathPrefix: "git.apache.org", re: regexp.MustCompile(`^(?P<root>git\.apache\.org/[a-z0-9_.\-]+\.git)(/[\w.\-]+)*$`), vcs: "git", repo: "https://{root}"},
	{pathPrefix: "git.openstack.org", re: regexp.MustCompile(`^(?P<root>git\.openstack\.org/[\w.\-]+/[\w.\-]+)(\.git)?(/[\w.\-]+)*$`), vcs: "git", repo: "https://{root}"},
	{pathPrefix: "chiselapp.com", re: regexp.MustCompile(`^(?P<root>chiselapp\.com/user/[A-Za-z0-9]+/repository/[\w.\-]+)$`), vcs: "fossil", repo: "https://{root}"},
	{re: regexp.MustCompile(`(?P<root>(?P<repo>([a-z0-9.\-]+\.)+[a-z0-9.\-]+(:[0-9]+)?(/~?[\w.\-]+)+?)\.(?P<vcs>bzr|fossil|git|hg|svn))(/~?[\w.\-]+)*$`), schemelessRepo: true},
}

var errUnknownSite = errors.New("dynamic lookup required to find mapping")

var vcsNames = []string{"hg", "git", "svn", "bzr", "fossil"}

// fromKnownHosts maps path through the hard-coded patterns.
func (f *Fetcher) fromKnownHosts(ctx context.Context, path string, insecure bool) (*repoRoot, error) {
	for _, srv := range knownHosts {
		if !strHasPathPrefix(path, srv.pathPrefix) {
			continue
		}
		m := srv.re.FindStringSubmatch(path)
		if m == nil {
			if srv.pathPrefix != "" {
				return nil, fmt.Errorf("invalid %s import path %q", srv.pathPrefix, path)
			}
			continue
		}
		match := map[string]string{"prefix": srv.pathPrefix + "/", "import": path}
		for i, name := range srv.re.SubexpNames() {
			if name != "" && match[name] == "" {
				match[name] = m[i]
			}
		}
		if srv.vcs != "" {
			match["vcs"] = expand(match, srv.vcs)
		}
		if srv.repo != "" {
			match["repo"] = expand(match, srv.repo)
		}
		if srv.noVCSSuffix {
			for _, v := range vcsNames {
				if strings.HasSuffix(match["repo"], "."+v) {
					return nil, fmt.Errorf("invalid version control suffix in %s path", match["prefix"])
				}
			}
		}
		rr := &repoRoot{Root: match["root"], VCS: match["vcs"]}
		if err := f.checkVCS(rr.VCS, rr.Root); err != nil {
			return nil, err
		}
		if !srv.schemelessRepo {
			rr.Repo = match["repo"]
			return rr, nil
		}
		// The go command pings the schemes git accepts, secure ones
		// unless the path is --insecure; git:// is never allowed here.
		schemes := []string{"https", "ssh"}
		if insecure {
			schemes = []string{"https", "http", "ssh"}
		}
		for _, s := range schemes {
			u := s + "://" + match["repo"]
			if err := f.ping(ctx, u); err == nil {
				rr.Repo = u
				return rr, nil
			}
		}
		frag := "secure "
		if insecure {
			frag = ""
		}
		return nil, fmt.Errorf("no %sprotocol found for repository", frag)
	}
	return nil, errUnknownSite
}

// strHasPathPrefix is the go command's str.HasPathPrefix: an empty
// prefix matches every path.
func strHasPathPrefix(s, prefix string) bool {
	if len(s) == len(prefix) {
		return s == prefix
	}
	if prefix == "" {
		return true
	}
	if len(s) > len(prefix) {
		if prefix[len(prefix)-1] == '/' || s[len(prefix)] == '/' {
			return s[:len(prefix)] == prefix
		}
	}
	return false
}

func expand(match map[string]string, s string) string {
	oldNew := make([]string, 0, 2*len(match))
	for k, v := range match {
		oldNew = append(oldNew, "{"+k+"}", v)
	}
	return strings.NewReplacer(oldNew...).Replace(s)
}

// checkVCS applies GOVCS and the set of VCSs modproxy speaks.
func (f *Fetcher) checkVCS(vcs, root string) error {
	if vcs == "mod" {
		return nil // the proxy protocol, always allowed (as the go command)
	}
	private := f.cfg.Private != "" && module.MatchPrefixPatterns(f.cfg.Private, root)
	if !f.govcs.allow(root, private, vcs) {
		what := "public"
		if private {
			what = "private"
		}
		return fmt.Errorf("GOVCS disallows using %s for %s %s", vcs, what, root)
	}
	if vcs != "git" {
		return fmt.Errorf("%s: version control system %q is not supported (only git)", root, vcs)
	}
	return nil
}

// VCSPolicy is a parsed GOVCS setting, the go command's defaults
// (private:all, public:git|hg) appended.
type VCSPolicy []govcsRule

type govcsRule struct {
	pattern string
	allowed []string
}

// ParseGOVCS parses a GOVCS value (go help vcs).
func ParseGOVCS(s string) (VCSPolicy, error) {
	s = strings.TrimSpace(s)
	var cfg VCSPolicy
	have := map[string]string{}
	if s != "" {
		for item := range strings.SplitSeq(s, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				return nil, fmt.Errorf("empty entry in GOVCS")
			}
			pattern, list, found := strings.Cut(item, ":")
			if !found {
				return nil, fmt.Errorf("malformed entry in GOVCS (missing colon): %q", item)
			}
			pattern, list = strings.TrimSpace(pattern), strings.TrimSpace(list)
			if pattern == "" {
				return nil, fmt.Errorf("empty pattern in GOVCS: %q", item)
			}
			if list == "" {
				return nil, fmt.Errorf("empty VCS list in GOVCS: %q", item)
			}
			if strings.HasPrefix(pattern, ".") || strings.HasPrefix(pattern, "/") {
				return nil, fmt.Errorf("relative pattern not allowed in GOVCS: %q", pattern)
			}
			if old := have[pattern]; old != "" {
				return nil, fmt.Errorf("unreachable pattern in GOVCS: %q after %q", item, old)
			}
			have[pattern] = item
			allowed := strings.Split(list, "|")
			for i, a := range allowed {
				a = strings.TrimSpace(a)
				if a == "" {
					return nil, fmt.Errorf("empty VCS name in GOVCS: %q", item)
				}
				allowed[i] = a
			}
			cfg = append(cfg, govcsRule{pattern, allowed})
		}
	}
	return append(cfg, govcsRule{"private", []string{"all"}}, govcsRule{"public", []string{"git", "hg"}}), nil
}

func (c VCSPolicy) allow(path string, private bool, vcs string) bool {
	for _, rule := range c {
		var match bool
		switch rule.pattern {
		case "private":
			match = private
		case "public":
			match = !private
		default:
			match = module.MatchPrefixPatterns(rule.pattern, path)
		}
		if !match {
			continue
		}
		for _, a := range rule.allowed {
			if a == vcs || a == "all" {
				return true
			}
		}
		return false
	}
	return false
}

// lookup finds the repository of module path: known hosts first, then
// ?go-get=1 discovery. Results (and failures) are remembered for
// DiscoveryTTL.
func (f *Fetcher) lookup(ctx context.Context, path string) (*repoRoot, error) {
	f.rootsMu.Lock()
	if e, ok := f.roots[path]; ok && time.Since(e.at) < f.cfg.DiscoveryTTL {
		f.rootsMu.Unlock()
		return e.rr, nil
	}
	f.rootsMu.Unlock()
	// Detached from the first caller (others wait for the same
	// discovery): a caller that leaves does not wait for it.
	ch := f.rootFlight.DoChan(path, func() (any, error) {
		start := time.Now()
		if err := f.run.track(); err != nil {
			return nil, err
		}
		defer f.run.wg.Done()
		ctx, cancel := context.WithTimeout(detach(f.run.base, ctx), f.cfg.Timeouts.Discovery)
		defer cancel()
		rr, err := f.repoRootFor(ctx, path)
		f.observe(ctx, PhaseDiscovery, time.Since(start))
		if err != nil {
			err = notExist(fmt.Errorf("unrecognized import path %q: %w", path, err))
		}
		if err == nil {
			// Failures are not remembered: the proxy's negative cache
			// handles "not found", and a network failure may pass.
			f.rootsMu.Lock()
			f.roots[path] = rootEntry{rr: rr, at: time.Now()}
			f.rootsMu.Unlock()
		}
		return rr, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*repoRoot), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type rootEntry struct {
	rr *repoRoot
	at time.Time
}

func (f *Fetcher) insecure(path string) bool {
	return f.cfg.Insecure != "" && module.MatchPrefixPatterns(f.cfg.Insecure, path)
}

func (f *Fetcher) repoRootFor(ctx context.Context, path string) (*repoRoot, error) {
	if p := httpPrefix(path); p != "" {
		return nil, fmt.Errorf("%q not allowed in import path", p+"//")
	}
	insecure := f.insecure(path)
	rr, err := f.fromKnownHosts(ctx, path, insecure)
	if err != errUnknownSite {
		return rr, err
	}
	return f.discover(ctx, path, insecure)
}

func httpPrefix(s string) string {
	for _, p := range [...]string{"http:", "https:"} {
		if strings.HasPrefix(s, p) {
			return p
		}
	}
	return ""
}

// metaImport is one <meta name="go-import" content="prefix vcs root [subdir]">.
type metaImport struct {
	Prefix, VCS, RepoRoot, SubDir string
}

// discover reads path's ?go-get=1 page and follows its go-import tag,
// verifying a non-authoritative tag at its prefix, as the go command does.
func (f *Fetcher) discover(ctx context.Context, path string, insecure bool) (*repoRoot, error) {
	pageURL, imports, err := f.metaImports(ctx, path, insecure)
	if err != nil {
		return nil, err
	}
	mmi, err := matchGoImport(imports, path)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %v", pageURL, err)
	}
	if mmi.Prefix != path {
		url2, imports2, err := f.metaImports(ctx, mmi.Prefix, insecure)
		if err != nil {
			return nil, err
		}
		mmi2, err := matchGoImport(imports2, path)
		if err != nil || mmi != mmi2 {
			return nil, fmt.Errorf("%s and %s disagree about go-import for %s", pageURL, url2, mmi.Prefix)
		}
	}
	if s := mmi.SubDir; s != "" && (s[0] == '/' || s[0] == '-') {
		return nil, fmt.Errorf("%s: invalid subdirectory %q", pageURL, s)
	}
	u, err := url.Parse(mmi.RepoRoot)
	if err != nil || u.Scheme == "" || u.Scheme == "file" {
		return nil, fmt.Errorf("%s: invalid repo root %q", pageURL, redactURL(mmi.RepoRoot))
	}
	if err := f.checkVCS(mmi.VCS, mmi.Prefix); err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "https", "ssh", "git+ssh":
	case "http":
		if !insecure {
			return nil, fmt.Errorf("%s: repository %s uses plain HTTP; allow it with --insecure", pageURL, redactURL(mmi.RepoRoot))
		}
	default:
		return nil, fmt.Errorf("%s: repository scheme %q is not allowed (https, ssh; http with --insecure)", pageURL, u.Scheme)
	}
	return &repoRoot{Repo: mmi.RepoRoot, Root: mmi.Prefix, SubDir: mmi.SubDir, VCS: mmi.VCS}, nil
}

const maxDiscoveryPage = 1 << 20

// metaImports fetches prefix's ?go-get=1 page: over HTTPS, falling back
// to plain HTTP only for --insecure paths.
func (f *Fetcher) metaImports(ctx context.Context, prefix string, insecure bool) (string, []metaImport, error) {
	host, p, _ := strings.Cut(prefix, "/")
	if !strings.Contains(host, ".") {
		return "", nil, errors.New("import path does not begin with hostname")
	}
	u := &url.URL{Scheme: "https", Host: host, Path: "/" + p, RawQuery: "go-get=1"}
	client := f.cfg.Client
	if insecure {
		client = f.insecureClient
	}
	imports, err := f.fetchMeta(ctx, client, u)
	if err != nil && insecure {
		u.Scheme = "http"
		var err2 error
		if imports, err2 = f.fetchMeta(ctx, client, u); err2 == nil {
			err = nil
		} else {
			err = fmt.Errorf("https: %v; http: %v", err, err2)
		}
	}
	if err != nil {
		return u.String(), nil, err
	}
	if len(imports) == 0 {
		return u.String(), nil, fmt.Errorf("no go-import meta tag found in %s", u)
	}
	return u.String(), imports, nil
}

func (f *Fetcher) fetchMeta(ctx context.Context, client *http.Client, u *url.URL) ([]metaImport, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "modproxy")
	resp, err := f.auth.do(client, req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %v", u, redactText(err.Error()))
	}
	defer resp.Body.Close()
	imports, perr := parseMetaGoImports(io.LimitReader(resp.Body, maxDiscoveryPage))
	if len(imports) == 0 && resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading %s: %d %s", u, resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	if perr != nil {
		return nil, fmt.Errorf("parsing %s: %v", u, perr)
	}
	return imports, nil
}

// parseMetaGoImports is the go command's parser (vcs/discovery.go) in
// module mode: mod entries first, superseding other entries of the same
// prefix.
func parseMetaGoImports(r io.Reader) ([]metaImport, error) {
	d := xml.NewDecoder(r)
	d.CharsetReader = func(charset string, input io.Reader) (io.Reader, error) {
		switch strings.ToLower(charset) {
		case "utf-8", "ascii":
			return input, nil
		}
		return nil, fmt.Errorf("can't decode XML document using charset %q", charset)
	}
	d.Strict = false
	var imports []metaImport
	for {
		t, err := d.RawToken()
		if err != nil {
			if err != io.EOF && len(imports) == 0 {
				return nil, err
			}
			break
		}
		if e, ok := t.(xml.StartElement); ok && strings.EqualFold(e.Name.Local, "body") {
			break
		}
		if e, ok := t.(xml.EndElement); ok && strings.EqualFold(e.Name.Local, "head") {
			break
		}
		e, ok := t.(xml.StartElement)
		if !ok || !strings.EqualFold(e.Name.Local, "meta") || attrValue(e.Attr, "name") != "go-import" {
			continue
		}
		if f := strings.Fields(attrValue(e.Attr, "content")); len(f) == 3 || len(f) == 4 {
			mi := metaImport{Prefix: f[0], VCS: f[1], RepoRoot: f[2]}
			if len(f) == 4 {
				mi.SubDir = f[3]
			}
			imports = append(imports, mi)
		}
	}
	var list []metaImport
	have := map[string]bool{}
	for _, m := range imports {
		if m.VCS == "mod" {
			have[m.Prefix] = true
			list = append(list, m)
		}
	}
	for _, m := range imports {
		if m.VCS != "mod" && !have[m.Prefix] {
			list = append(list, m)
		}
	}
	return list, nil
}

func attrValue(attrs []xml.Attr, name string) string {
	for _, a := range attrs {
		if strings.EqualFold(a.Name.Local, name) {
			return a.Value
		}
	}
	return ""
}

func matchGoImport(imports []metaImport, importPath string) (metaImport, error) {
	match := -1
	var mismatches []string
	for i, im := range imports {
		if !strHasPathPrefix(importPath, im.Prefix) {
			mismatches = append(mismatches, im.Prefix)
			continue
		}
		if match >= 0 {
			if imports[match].VCS == "mod" && im.VCS != "mod" {
				break
			}
			return metaImport{}, fmt.Errorf("multiple meta tags match import path %q", importPath)
		}
		match = i
	}
	if match == -1 {
		msgs := make([]string, len(mismatches))
		for i, p := range mismatches {
			msgs[i] = fmt.Sprintf("meta tag %s did not match import path %s", p, importPath)
		}
		return metaImport{}, fmt.Errorf("no go-import meta tags (%s)", strings.Join(msgs, ", "))
	}
	return imports[match], nil
}

// ping checks that git can list repo.
func (f *Fetcher) ping(ctx context.Context, repo string) error {
	m := f.mirrorFor(repo)
	config, err := m.credentials(ctx)
	if err != nil {
		return err
	}
	_, err = f.run.run(ctx, gitCall{args: []string{"ls-remote", "-q", "--end-of-options", repo}, config: config, allow: m.allow, timeout: f.cfg.Timeouts.LsRemote})
	return err
}
