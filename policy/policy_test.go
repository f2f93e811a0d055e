package policy

import (
	"strings"
	"testing"
)

const testPolicy = `
default: deny
rules:
  - name: bad-yaml
    action: deny
    paths: [example.com/yaml]
    versions: ">=v1.2.0 <v1.2.4 || =v0.9.1"
    reason: "CVE-2026-0001: use v1.2.4 or later"
  - name: withdrawn
    action: deny
    paths: [example.com/gone]
  - name: not-pre
    action: deny
    paths: [example.com/stable]
    versions: "<v1.0.0"
  - name: hosts
    action: allow
    paths: [example.com, git.corp.example/*]
`

func TestCheck(t *testing.T) {
	p, err := Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, version string
		allowed       bool
		rule          string
	}{
		{"example.com/yaml", "v1.1.9", true, "hosts"},
		{"example.com/yaml", "v1.2.0", false, "bad-yaml"},
		{"example.com/yaml", "v1.2.3", false, "bad-yaml"},
		{"example.com/yaml", "v1.2.4-pre", false, "bad-yaml"}, // a pre-release of the fix is below it
		{"example.com/yaml", "v1.2.4", true, "hosts"},
		{"example.com/yaml", "v0.9.1", false, "bad-yaml"},
		{"example.com/yaml", "v1.2.1-0.20260101000000-abcdefabcdef", false, "bad-yaml"}, // pseudo-version inside
		{"example.com/yaml", "", true, "hosts"},                                         // the list is not hidden
		{"Example.com/YAML", "v1.2.1", false, "bad-yaml"},                               // case variant still denied
		{"example.com/yaml/v2", "v2.0.0", true, "hosts"},                                // another module
		{"example.com/yaml", "master", false, "bad-yaml"},                               // not comparable: fail closed
		{"example.com/gone", "", false, "withdrawn"},
		{"example.com/gone", "v1.0.0", false, "withdrawn"},
		{"example.com/gone/sub", "v1.0.0", false, "withdrawn"},
		{"example.com/stable", "v0.9.0", false, "not-pre"},
		{"example.com/stable", "v1.0.0", true, "hosts"},
		{"example.com/old", "v3.0.0+incompatible", true, "hosts"},
		{"git.corp.example/lib", "v1.0.0", true, "hosts"},
		{"git.corp.example", "v1.0.0", false, DefaultRule},     // the pattern needs a path element
		{"Git.Corp.Example/lib", "v1.0.0", false, DefaultRule}, // allow rules match exactly
		{"github.com/other/mod", "v1.0.0", false, DefaultRule},
		{"github.com/other/mod", "", false, DefaultRule},
	} {
		d := p.Check(tc.path, tc.version)
		if d.Allowed != tc.allowed || d.Rule != tc.rule {
			t.Errorf("Check(%s, %q) = %+v; want allowed=%v rule=%s", tc.path, tc.version, d, tc.allowed, tc.rule)
		}
	}
	msg := p.Check("example.com/yaml", "v1.2.3").Message("example.com/yaml", "v1.2.3")
	if msg != `forbidden by module policy: example.com/yaml@v1.2.3 denied by rule "bad-yaml": CVE-2026-0001: use v1.2.4 or later` {
		t.Errorf("message %q", msg)
	}
	var none *Policy
	if d := none.Check("x.example/y", "v1.0.0"); !d.Allowed {
		t.Error("a nil policy denies")
	}
	allowAll, _ := Parse([]byte("rules: []\n"))
	if d := allowAll.Check("x.example/y", "v1.0.0"); !d.Allowed || d.Rule != DefaultRule {
		t.Errorf("empty policy: %+v", d)
	}
}

func TestParseErrors(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown key":       {"rules:\n  - {name: a, action: deny, path: [x.example]}\n", "field path not found"},
		"bad default":       {"default: Deny\nrules: []\n", "default"},
		"bad action":        {"rules:\n  - {name: a, action: block, paths: [x.example]}\n", "action"},
		"no paths":          {"rules:\n  - {name: a, action: deny}\n", "no paths"},
		"empty path":        {"rules:\n  - {name: a, action: deny, paths: ['']}\n", "path pattern"},
		"comma path":        {"rules:\n  - {name: a, action: deny, paths: ['a.example,b.example']}\n", "commas"},
		"bad glob":          {"rules:\n  - {name: a, action: deny, paths: ['a.example/[']}\n", "path pattern"},
		"bad version":       {"rules:\n  - {name: a, action: deny, paths: [x.example], versions: '>=1.2.0'}\n", "not a semantic version"},
		"empty alternative": {"rules:\n  - {name: a, action: deny, paths: [x.example], versions: 'v1.0.0 ||'}\n", "empty alternative"},
		"duplicate name":    {"rules:\n  - {name: a, action: deny, paths: [x.example]}\n  - {name: a, action: deny, paths: [y.example]}\n", "duplicate"},
		"reserved name":     {"rules:\n  - {name: default, action: deny, paths: [x.example]}\n", "duplicate"},
		"label-unsafe name": {"rules:\n  - {name: 'a b', action: deny, paths: [x.example]}\n", "name"},
		"multi-line reason": {"rules:\n  - {name: a, action: deny, paths: [x.example], reason: \"a\\nb\"}\n", "one line"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
