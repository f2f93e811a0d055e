// Package testupstream is a fake Go module proxy for tests and benchmarks.
// It serves modules built in memory with golang.org/x/mod/zip over the
// GOPROXY protocol on 127.0.0.1, and injects faults on request: delays,
// error statuses, connection resets, truncated and tampered files.
package testupstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	modzip "golang.org/x/mod/zip"
)

// Module is a module version to serve.
type Module struct {
	Path, Version string
	// Files maps file names (slash-separated, relative to the module root)
	// to contents. A go.mod is added when missing ("module <Path>"),
	// except for +incompatible versions, whose zip has none.
	Files map[string]string
	Time  time.Time
}

// GoMod returns the module's go.mod content.
func (m Module) GoMod() string {
	if gm, ok := m.Files["go.mod"]; ok {
		return gm
	}
	return "module " + m.Path + "\n"
}

// built is a module with its files rendered.
type built struct {
	mod         Module
	info, gomod []byte
	zip         []byte
	tamperedZip []byte
}

// Fault changes how matching requests are answered.
type Fault struct {
	// Match selects requests by URL path; nil matches every request.
	Match func(path string) bool
	// Delay before the response headers are written.
	Delay time.Duration
	// Status, when non-zero, is answered instead of the file.
	Status int
	// Reset closes the connection without an answer.
	Reset bool
	// Truncate sends a correct Content-Length but only half of the body,
	// then (after SlowBody, when set) closes the connection.
	Truncate bool
	// Tamper serves a changed copy: a zip whose files differ (still a valid
	// zip) or a go.mod with an extra line.
	Tamper bool
	// SlowBody sleeps this long between 32 KiB pieces of the body.
	SlowBody time.Duration
	// Garbage answers 200 with bytes that are not the file.
	Garbage bool
	// Synthetic answers 200 with this many bytes (Content-Length set),
	// generated as they are sent: load for many large downloads without
	// holding them in memory. The body is not a valid zip.
	Synthetic int64
}

// Server is a running fake upstream.
type Server struct {
	srv     *httptest.Server
	certPEM []byte // NewTLS: the server certificate

	mu       sync.Mutex
	mods     map[string]*built // key path@version
	faults   []Fault
	requests map[string]int // by URL path
	latency  time.Duration
	sumName  string // PassThroughSumDB: database name
	sumURL   string // and its base URL
}

// PassThroughSumDB makes the server pass the checksum database name at
// dbURL through at /sumdb/<name>/, as a module proxy may: /supported
// answers 200 and every other path is fetched from dbURL. A Tamper fault
// matching a tile path serves the tile with one byte changed (its length
// kept), a lookup with its first go.sum line's hash changed.
func (s *Server) PassThroughSumDB(name, dbURL string) {
	s.mu.Lock()
	s.sumName, s.sumURL = name, strings.TrimSuffix(dbURL, "/")
	s.mu.Unlock()
}

// serveSumDB answers a passed-through checksum-database request.
func (s *Server) serveSumDB(w http.ResponseWriter, r *http.Request, rest, dbURL string, tamper bool) {
	if rest == "supported" {
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, dbURL+"/"+rest, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, "checksum database: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		http.Error(w, "checksum database: "+err.Error(), http.StatusBadGateway)
		return
	}
	if tamper && resp.StatusCode == http.StatusOK && len(body) > 0 {
		body = bytes.Clone(body)
		switch {
		case strings.HasPrefix(rest, "tile/"):
			body[len(body)/2] ^= 0x55
		case strings.HasPrefix(rest, "lookup/"):
			if i := bytes.Index(body, []byte(" h1:")); i >= 0 && i+5 < len(body) {
				body[i+5] ^= 0x01
			}
		}
	}
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	w.Write(body)
}

// New starts a fake upstream on 127.0.0.1 serving mods.
func New(mods ...Module) (*Server, error) {
	s, err := newServer(mods)
	if err != nil {
		return nil, err
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s, nil
}

// newServer builds a Server serving mods, not yet listening.
func newServer(mods []Module) (*Server, error) {
	s := &Server{mods: make(map[string]*built), requests: make(map[string]int)}
	for _, m := range mods {
		if err := s.Add(m); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// URL is the base URL to use as GOPROXY.
func (s *Server) URL() string { return s.srv.URL }

// Close stops the server and closes its connections.
func (s *Server) Close() {
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// CloseClientConnections drops every open client connection, so that
// the next requests dial (and resolve, and handshake) again.
func (s *Server) CloseClientConnections() { s.srv.CloseClientConnections() }

// Add makes a module version available.
func (s *Server) Add(m Module) error {
	if err := module.Check(m.Path, m.Version); err != nil {
		return fmt.Errorf("testupstream: %w", err)
	}
	if m.Time.IsZero() {
		m.Time = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	}
	if m.Files == nil {
		m.Files = map[string]string{}
	}
	// A +incompatible version has no go.mod of its own: the proxy
	// serves a synthesized one and the zip has none.
	incompatible := strings.HasSuffix(m.Version, "+incompatible")
	if _, ok := m.Files["go.mod"]; !ok && !incompatible {
		m.Files["go.mod"] = m.GoMod()
	}
	b := &built{mod: m, gomod: []byte(m.GoMod())}
	b.info, _ = json.Marshal(struct {
		Version string
		Time    time.Time
	}{m.Version, m.Time})
	var err error
	if b.zip, err = MakeZip(m.Path, m.Version, m.Files); err != nil {
		return err
	}
	tampered := make(map[string]string, len(m.Files)+1)
	for k, v := range m.Files {
		tampered[k] = v
	}
	tampered["tampered.go"] = "package tampered // injected by a bad upstream\n"
	if b.tamperedZip, err = MakeZip(m.Path, m.Version, tampered); err != nil {
		return err
	}
	s.mu.Lock()
	s.mods[m.Path+"@"+m.Version] = b
	s.mu.Unlock()
	return nil
}

// Zip returns the zip served for path@version (nil if unknown).
func (s *Server) Zip(path, version string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.mods[path+"@"+version]; b != nil {
		return b.zip
	}
	return nil
}

// GoMod returns the go.mod served for path@version (nil if unknown).
func (s *Server) GoMod(path, version string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.mods[path+"@"+version]; b != nil {
		return b.gomod
	}
	return nil
}

// Modules returns every module version served.
func (s *Server) Modules() []Module {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Module, 0, len(s.mods))
	for _, b := range s.mods {
		out = append(out, b.mod)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return semver.Compare(out[i].Version, out[j].Version) < 0
	})
	return out
}

// SetFaults replaces the active faults; the first matching one applies.
func (s *Server) SetFaults(f ...Fault) {
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
}

// SetLatency adds d before every answer, to mimic a WAN.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = d
	s.mu.Unlock()
}

// Requests returns how many requests each URL path received.
func (s *Server) Requests() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.requests))
	for k, v := range s.requests {
		out[k] = v
	}
	return out
}

// Count returns how many requests had a URL path containing substr.
func (s *Server) Count(substr string) int {
	n := 0
	for p, c := range s.Requests() {
		if strings.Contains(p, substr) {
			n += c
		}
	}
	return n
}

// ResetCounts forgets the request counts.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	s.requests = make(map[string]int)
	s.mu.Unlock()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests[r.URL.Path]++
	latency := s.latency
	var fault *Fault
	for i := range s.faults {
		if s.faults[i].Match == nil || s.faults[i].Match(r.URL.Path) {
			fault = &s.faults[i]
			break
		}
	}
	s.mu.Unlock()
	if latency > 0 {
		sleep(r, latency)
	}
	if fault != nil {
		sleep(r, fault.Delay)
		if fault.Reset {
			reset(w)
			return
		}
		if fault.Status != 0 {
			http.Error(w, fmt.Sprintf("injected %d", fault.Status), fault.Status)
			return
		}
		if fault.Garbage {
			w.Write([]byte("<html>this is not a module file</html>"))
			return
		}
		if fault.Synthetic > 0 {
			serveSynthetic(w, r, fault.Synthetic, fault.SlowBody)
			return
		}
	}
	s.mu.Lock()
	sumName, sumURL := s.sumName, s.sumURL
	s.mu.Unlock()
	if rest, ok := strings.CutPrefix(r.URL.Path, "/sumdb/"+sumName+"/"); ok && sumName != "" {
		s.serveSumDB(w, r, rest, sumURL, fault != nil && fault.Tamper)
		return
	}
	body, ctype, err := s.lookup(r.URL.Path, fault != nil && fault.Tamper)
	if err != nil {
		http.Error(w, "not found: "+err.Error(), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	switch {
	case fault != nil && fault.Truncate:
		w.Write(body[:len(body)/2])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		sleep(r, fault.SlowBody)
		reset(w)
	case fault != nil && fault.SlowBody > 0:
		for len(body) > 0 {
			n := min(len(body), 32<<10)
			if _, err := w.Write(body[:n]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			body = body[n:]
			sleep(r, fault.SlowBody)
		}
	default:
		w.Write(body)
	}
}

// syntheticBlock is the repeated content of Synthetic answers.
var syntheticBlock = func() []byte {
	b := make([]byte, 256<<10)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}()

func serveSynthetic(w http.ResponseWriter, r *http.Request, n int64, pause time.Duration) {
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Length", fmt.Sprint(n))
	for n > 0 && r.Context().Err() == nil {
		m := min(n, int64(len(syntheticBlock)))
		if _, err := w.Write(syntheticBlock[:m]); err != nil {
			return
		}
		n -= m
		if pause > 0 {
			w.(http.Flusher).Flush()
			sleep(r, pause)
		}
	}
}

func sleep(r *http.Request, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

// reset closes the client connection abruptly.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // send RST, not FIN
	}
	conn.Close()
}

// lookup finds the file for a protocol path.
func (s *Server) lookup(p string, tamper bool) ([]byte, string, error) {
	p = strings.TrimPrefix(p, "/")
	var escMod, file string
	if m, ok := strings.CutSuffix(p, "/@latest"); ok {
		escMod, file = m, "@latest"
	} else if m, f, ok := strings.Cut(p, "/@v/"); ok {
		escMod, file = m, f
	} else {
		return nil, "", fmt.Errorf("unknown path %q", p)
	}
	mod, err := module.UnescapePath(escMod)
	if err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var versions []string
	for _, b := range s.mods {
		if b.mod.Path == mod {
			versions = append(versions, b.mod.Version)
		}
	}
	if len(versions) == 0 {
		return nil, "", fmt.Errorf("module %s: no such module", mod)
	}
	semver.Sort(versions)
	switch file {
	case "list":
		var buf bytes.Buffer
		for _, v := range versions {
			if !module.IsPseudoVersion(v) {
				buf.WriteString(v + "\n")
			}
		}
		return buf.Bytes(), "text/plain; charset=utf-8", nil
	case "@latest":
		best := versions[len(versions)-1]
		for i := len(versions) - 1; i >= 0; i-- {
			if semver.Prerelease(versions[i]) == "" {
				best = versions[i]
				break
			}
		}
		return s.mods[mod+"@"+best].info, "application/json", nil
	}
	ext := file[strings.LastIndexByte(file, '.')+1:]
	ver, err := module.UnescapeVersion(strings.TrimSuffix(file, "."+ext))
	if err != nil {
		return nil, "", err
	}
	b := s.mods[mod+"@"+ver]
	if b == nil {
		// Resolve simple queries the way a real proxy does: a branch name
		// or version prefix maps to the newest matching version.
		if ext == "info" {
			for i := len(versions) - 1; i >= 0; i-- {
				if ver == "master" || ver == "main" || strings.HasPrefix(versions[i], ver+".") {
					return s.mods[mod+"@"+versions[i]].info, "application/json", nil
				}
			}
		}
		return nil, "", fmt.Errorf("%s@%s: unknown revision", mod, ver)
	}
	switch ext {
	case "info":
		return b.info, "application/json", nil
	case "mod":
		if tamper {
			return append(append([]byte{}, b.gomod...), "// tampered\n"...), "text/plain; charset=utf-8", nil
		}
		return b.gomod, "text/plain; charset=utf-8", nil
	case "zip":
		if tamper {
			return b.tamperedZip, "application/zip", nil
		}
		return b.zip, "application/zip", nil
	}
	return nil, "", fmt.Errorf("unknown file %q", file)
}

// MakeZip builds a module zip with golang.org/x/mod/zip.
func MakeZip(path, version string, files map[string]string) ([]byte, error) {
	var zfiles []modzip.File
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		zfiles = append(zfiles, memFile{name: name, data: files[name]})
	}
	var buf bytes.Buffer
	if err := modzip.Create(&buf, module.Version{Path: path, Version: version}, zfiles); err != nil {
		return nil, fmt.Errorf("testupstream: zip %s@%s: %w", path, version, err)
	}
	return buf.Bytes(), nil
}

// memFile is an in-memory modzip.File.
type memFile struct {
	name, data string
}

func (f memFile) Path() string                 { return f.name }
func (f memFile) Lstat() (fs.FileInfo, error)  { return memInfo(f), nil }
func (f memFile) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(f.data)), nil }

type memInfo memFile

func (i memInfo) Name() string       { return i.name[strings.LastIndexByte(i.name, '/')+1:] }
func (i memInfo) Size() int64        { return int64(len(i.data)) }
func (i memInfo) Mode() fs.FileMode  { return 0o644 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }
