// Package policy decides which module versions modproxy may serve.
//
// A policy is an ordered list of allow and deny rules, each naming module
// path patterns (GOPRIVATE syntax) and optionally a version range; the
// first rule that matches a request decides it, and a request no rule
// matches gets the default (allow unless the file says deny, which makes
// the allow rules an allow list).
//
//	default: deny
//	rules:
//	  - name: bad-yaml
//	    action: deny
//	    paths: [example.com/yaml]
//	    versions: ">=v1.2.0 <v1.2.4"
//	    reason: "CVE-2026-0001: use v1.2.4 or later"
//	  - name: corp-and-github
//	    action: allow
//	    paths: [git.corp.example, github.com]
//
// Deny rules match module paths without regard to case and allow rules
// match them exactly, so that a case variant of a path is denied rather
// than let through.
package policy

import (
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"

	yaml "go.yaml.in/yaml/v2"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// DefaultRule is the rule name of a decision no rule made.
const DefaultRule = "default"

// File is a policy file.
type File struct {
	Default string `yaml:"default,omitempty"` // "allow" (the default) or "deny"
	Rules   []Rule `yaml:"rules"`
}

// Rule is one allow or deny rule.
type Rule struct {
	Name   string   `yaml:"name"`
	Action string   `yaml:"action"` // "allow" or "deny"
	Paths  []string `yaml:"paths"`
	// Versions is a version range: comparisons (=, !=, <, <=, >, >=, or
	// a bare version for =) joined by spaces all hold, and ranges joined
	// by "||" are alternatives. Empty: every version.
	Versions string `yaml:"versions,omitempty"`
	Reason   string `yaml:"reason,omitempty"`
}

// Decision is the policy's answer for one request.
type Decision struct {
	Allowed bool
	Rule    string // the rule that decided, or DefaultRule
	Reason  string
}

// Policy is a parsed policy, safe for concurrent use.
type Policy struct {
	deny  bool // the default
	rules []rule
}

type rule struct {
	Rule
	patterns string // comma-joined; lower-cased for deny rules
	ranges   [][]cmp
}

type cmp struct {
	op string
	v  string
}

var ruleName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`)

// Parse parses and validates a policy file. Unknown keys are errors.
func Parse(data []byte) (*Policy, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parse policy: %w", err)
	}
	return Compile(f)
}

// ReadFile reads and parses the policy file at path.
func ReadFile(name string) (*Policy, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return p, nil
}

// Compile validates f and returns its Policy.
func Compile(f File) (*Policy, error) {
	p := &Policy{}
	switch f.Default {
	case "", "allow":
	case "deny":
		p.deny = true
	default:
		return nil, fmt.Errorf("policy: default %q: want allow or deny", f.Default)
	}
	names := map[string]bool{DefaultRule: true}
	for i, r := range f.Rules {
		where := fmt.Sprintf("policy rule %d (%q)", i+1, r.Name)
		if !ruleName.MatchString(r.Name) {
			return nil, fmt.Errorf("%s: name must be 1 to 64 letters, digits, '.', '_' or '-' (it is a metric label)", where)
		}
		if names[r.Name] {
			return nil, fmt.Errorf("%s: duplicate name (or the reserved name %q)", where, DefaultRule)
		}
		names[r.Name] = true
		if r.Action != "allow" && r.Action != "deny" {
			return nil, fmt.Errorf("%s: action %q: want allow or deny", where, r.Action)
		}
		if len(r.Paths) == 0 {
			return nil, fmt.Errorf("%s: no paths (use \"*\" for every module path)", where)
		}
		for _, pat := range r.Paths {
			if pat == "" || strings.ContainsAny(pat, ", \t\n") {
				return nil, fmt.Errorf("%s: path pattern %q: want one non-empty pattern without commas or spaces", where, pat)
			}
			if _, err := path.Match(pat, ""); err != nil {
				return nil, fmt.Errorf("%s: path pattern %q: %w", where, pat, err)
			}
		}
		if strings.ContainsAny(r.Reason, "\r\n") {
			return nil, fmt.Errorf("%s: reason must be one line (the go command shows it)", where)
		}
		ranges, err := parseRange(r.Versions)
		if err != nil {
			return nil, fmt.Errorf("%s: versions: %w", where, err)
		}
		pats := strings.Join(r.Paths, ",")
		if r.Action == "deny" {
			pats = strings.ToLower(pats)
		}
		p.rules = append(p.rules, rule{Rule: r, patterns: pats, ranges: ranges})
	}
	return p, nil
}

func parseRange(s string) ([][]cmp, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out [][]cmp
	for alt := range strings.SplitSeq(s, "||") {
		fields := strings.Fields(alt)
		if len(fields) == 0 {
			return nil, fmt.Errorf("%q: empty alternative", s)
		}
		var and []cmp
		for _, f := range fields {
			op := ""
			for _, o := range []string{">=", "<=", "!=", ">", "<", "="} {
				if strings.HasPrefix(f, o) {
					op = o
					break
				}
			}
			v := strings.TrimPrefix(f, op)
			if op == "" {
				op = "="
			}
			if !semver.IsValid(v) {
				return nil, fmt.Errorf("%q: %q is not a semantic version (e.g. v1.2.3)", s, v)
			}
			// Build metadata (+incompatible) takes no part in the
			// comparison, as in semver.Compare.
			and = append(and, cmp{op: op, v: semver.Canonical(v)})
		}
		out = append(out, and)
	}
	return out, nil
}

func (r *rule) matchesVersion(v string) bool {
	if r.ranges == nil {
		return true
	}
	for _, and := range r.ranges {
		ok := true
		for _, c := range and {
			n := semver.Compare(v, c.v)
			switch c.op {
			case "=":
				ok = n == 0
			case "!=":
				ok = n != 0
			case "<":
				ok = n < 0
			case "<=":
				ok = n <= 0
			case ">":
				ok = n > 0
			case ">=":
				ok = n >= 0
			}
			if !ok {
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Check decides a request for module path at version; version is "" for
// requests that name none (the version list, @latest). Such a request is
// matched by every allow rule of its path, and by deny rules without a
// version range: denying some versions does not hide the module. A version
// that is not semantic (a query such as "master") is matched by deny rules
// with a range (it cannot be shown to be outside it) and not by allow rules
// with one.
func (p *Policy) Check(modPath, version string) Decision {
	if p != nil {
		lower := strings.ToLower(modPath)
		for i := range p.rules {
			r := &p.rules[i]
			deny := r.Action == "deny"
			target := modPath
			if deny {
				target = lower
			}
			if !module.MatchPrefixPatterns(r.patterns, target) {
				continue
			}
			switch {
			case version == "":
				if deny && r.ranges != nil {
					continue
				}
			case !semver.IsValid(version):
				// Not comparable: deny rules with a range match (fail
				// closed), allow rules with a range do not.
				if r.ranges != nil && !deny {
					continue
				}
			case !r.matchesVersion(version):
				continue
			}
			return Decision{Allowed: !deny, Rule: r.Name, Reason: r.Reason}
		}
		if p.deny {
			return Decision{Allowed: false, Rule: DefaultRule, Reason: "module path not in the policy's allow list"}
		}
	}
	return Decision{Allowed: true, Rule: DefaultRule}
}

// Message is the one-line refusal the client sees for a denied request.
func (d Decision) Message(modPath, version string) string {
	mod := modPath
	if version != "" {
		mod += "@" + version
	}
	msg := fmt.Sprintf("forbidden by module policy: %s denied by rule %q", mod, d.Rule)
	if d.Reason != "" {
		msg += ": " + d.Reason
	}
	return msg
}
