package proxy

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePath(t *testing.T) {
	tests := []struct {
		path     string
		want     Request
		wantErr  string
		notFound bool
	}{
		{path: "/golang.org/x/text/@v/list", want: Request{Module: "golang.org/x/text", Kind: KindList}},
		{path: "golang.org/x/text/@v/list", want: Request{Module: "golang.org/x/text", Kind: KindList}},
		{path: "/golang.org/x/text/@latest", want: Request{Module: "golang.org/x/text", Kind: KindLatest}},
		{path: "/golang.org/x/text/@v/v0.3.0.info", want: Request{Module: "golang.org/x/text", Kind: KindInfo, Version: "v0.3.0"}},
		{path: "/golang.org/x/text/@v/v0.3.0.mod", want: Request{Module: "golang.org/x/text", Kind: KindMod, Version: "v0.3.0"}},
		{path: "/golang.org/x/text/@v/v0.3.0.zip", want: Request{Module: "golang.org/x/text", Kind: KindZip, Version: "v0.3.0"}},
		{path: "/github.com/!burnt!sushi/toml/@v/v1.2.3.info", want: Request{Module: "github.com/BurntSushi/toml", Kind: KindInfo, Version: "v1.2.3"}},
		{path: "/example.com/m/v2/@v/v2.1.0.mod", want: Request{Module: "example.com/m/v2", Kind: KindMod, Version: "v2.1.0"}},
		{path: "/example.com/old/@v/v3.0.0+incompatible.zip", want: Request{Module: "example.com/old", Kind: KindZip, Version: "v3.0.0+incompatible"}},
		{path: "/example.com/m/@v/v1.0.0-rc.!x.info", want: Request{Module: "example.com/m", Kind: KindInfo, Version: "v1.0.0-rc.X"}},
		{path: "/example.com/m/@v/v0.0.0-20240102030405-abcdefabcdef.zip", want: Request{Module: "example.com/m", Kind: KindZip, Version: "v0.0.0-20240102030405-abcdefabcdef"}},
		// Queries: passed through, never stored under their name.
		{path: "/example.com/m/@v/master.info", want: Request{Module: "example.com/m", Kind: KindInfo, Version: "master", Query: true}},
		{path: "/example.com/m/@v/v1.2.info", want: Request{Module: "example.com/m", Kind: KindInfo, Version: "v1.2", Query: true}},
		{path: "/example.com/m/@v/!feature.info", want: Request{Module: "example.com/m", Kind: KindInfo, Version: "Feature", Query: true}},
		// Malformed: 400.
		{path: "/", wantErr: "want $module"},
		{path: "/example.com/m", wantErr: "want $module"},
		{path: "/example.com/m/@v/", wantErr: "unknown file"},
		{path: "/example.com/m/@v/v1.0.0.tar", wantErr: "unknown file"},
		{path: "/example.com/m/@v/v1.0.0", wantErr: "unknown file"},
		{path: "/Example.com/m/@v/list", wantErr: "invalid"},
		{path: "/../etc/passwd/@v/list", wantErr: "invalid"},
		{path: "/example.com/../m/@v/list", wantErr: "invalid"},
		{path: "/example.com//m/@v/list", wantErr: "invalid"},
		{path: "/example.com/m/@v/v1.0.0!.info", wantErr: "invalid"},
		{path: "/example.com/m/@v/ma\x00ster.info", wantErr: "invalid"},
		{path: "/example.com/m/@v/..info", wantErr: "invalid"},
		{path: "/" + strings.Repeat("a", 5000) + "/@v/list", wantErr: "too long"},
		// Well-formed but never an artifact: 404 so proxy lists fall through.
		{path: "/example.com/m/@v/master.zip", wantErr: "not canonical", notFound: true},
		{path: "/example.com/m/@v/v1.2.mod", wantErr: "not canonical", notFound: true},
		{path: "/example.com/m/@v/v2.0.0.mod", wantErr: "invalid version", notFound: true},
		{path: "/example.com/m/v2/@v/v1.0.0.info", wantErr: "invalid version", notFound: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := ParsePath(tt.path)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParsePath = %+v, want error containing %q", got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				var pe *PathError
				if !errors.As(err, &pe) || pe.NotFound != tt.notFound {
					t.Errorf("NotFound = %v, want %v", pe != nil && pe.NotFound, tt.notFound)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePath: %v", err)
			}
			if got != tt.want {
				t.Errorf("ParsePath = %+v, want %+v", got, tt.want)
			}
			// Round trip through the escaped form sent to upstreams.
			again, err := ParsePath(got.URLPath())
			if err != nil || again != got {
				t.Errorf("round trip of %q = %+v, %v", got.URLPath(), again, err)
			}
		})
	}
}

// FuzzParsePath checks that no input panics, that accepted paths are
// valid and safe, and that they survive an escape/parse round trip.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"/golang.org/x/text/@v/list", "/github.com/!burnt!sushi/toml/@v/v1.2.3.zip",
		"/example.com/m/@latest", "/example.com/m/@v/master.info", "/example.com/m/v2/@v/v2.0.0.mod",
		"/example.com/m/@v/v3.0.0+incompatible.info", "/../x/@v/list", "/a/@v/v1.0.0-!a.info",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		req, err := ParsePath(p)
		if err != nil {
			return
		}
		if req.Module == "" || strings.HasPrefix(req.Module, "/") {
			t.Fatalf("accepted unsafe module path %q from %q", req.Module, p)
		}
		for _, elem := range strings.Split(req.Module, "/") {
			if elem == "" || elem == "." || elem == ".." {
				t.Fatalf("accepted module path %q with element %q from %q", req.Module, elem, p)
			}
		}
		if strings.ContainsAny(req.Version, "/\\\x00") {
			t.Fatalf("accepted unsafe version %q from %q", req.Version, p)
		}
		switch req.Kind {
		case KindList, KindLatest:
			if req.Version != "" {
				t.Fatalf("%s request with version %q", req.Kind, req.Version)
			}
		case KindInfo, KindMod, KindZip:
			if req.Version == "" {
				t.Fatalf("%s request without version", req.Kind)
			}
			if req.Query && req.Kind != KindInfo {
				t.Fatalf("query %q accepted for %s", req.Version, req.Kind)
			}
		default:
			t.Fatalf("unknown kind %q", req.Kind)
		}
		again, err := ParsePath(req.URLPath())
		if err != nil || again != req {
			t.Fatalf("round trip %q -> %+v -> %q -> %+v, %v", p, req, req.URLPath(), again, err)
		}
	})
}

func TestParseUpstreams(t *testing.T) {
	tests := []struct {
		in      string
		want    string // FormatUpstreams of the result
		anyErr  []bool
		wantErr string
	}{
		{in: "https://a.example", want: "https://a.example", anyErr: []bool{false}},
		{in: "https://a.example/,https://b.example/go", want: "https://a.example,https://b.example/go", anyErr: []bool{false, false}},
		{in: "https://a.example|https://b.example,off", want: "https://a.example|https://b.example,off", anyErr: []bool{true, false, false}},
		{in: "a.example,direct", want: "https://a.example,direct", anyErr: []bool{false, false}},
		{in: "http://127.0.0.1:8081|", want: "http://127.0.0.1:8081", anyErr: []bool{false}},
		{in: " https://a.example , , https://b.example ", want: "https://a.example,https://b.example", anyErr: []bool{false, false}},
		{in: "", wantErr: "empty"},
		{in: ",", wantErr: "empty"},
		{in: "file:///tmp/mods", wantErr: "scheme"},
		{in: "https://", wantErr: "no host"},
		{in: "https://a.example?x=1", wantErr: "query"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ups, err := ParseUpstreams(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseUpstreams(%q) = %v, %v; want error containing %q", tt.in, ups, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := FormatUpstreams(ups); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			for i, u := range ups {
				if u.AnyError != tt.anyErr[i] {
					t.Errorf("entry %d AnyError = %v, want %v", i, u.AnyError, tt.anyErr[i])
				}
			}
		})
	}
}
