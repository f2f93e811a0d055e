// Package deploy holds modproxy's deployment files (Dockerfile, systemd unit,
// Kubernetes manifests, Prometheus configuration and rules, Grafana dashboard)
// and helpers for tests that check them against the code.
package deploy

import (
	"embed"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	yaml "go.yaml.in/yaml/v2"
)

// Files are the deployment files that reference metric names.
//
//go:embed prometheus/rules.yml grafana/dashboard.json
var Files embed.FS

// metricRef matches a modproxy_* metric name that is not part of a recorded
// series name (level:metric:operation) or of a longer identifier.
var metricRef = regexp.MustCompile(`(?:^|[^a-zA-Z0-9_:])(modproxy_[a-zA-Z0-9_]*[a-zA-Z0-9])(?:$|[^a-zA-Z0-9_:])`)

// MetricNames returns, sorted and without duplicates, every modproxy_* metric
// name used by the PromQL expressions in prometheus/rules.yml and
// grafana/dashboard.json, with the histogram suffixes _bucket, _sum and _count
// removed (so modproxy_upstream_phase_seconds_bucket is reported as
// modproxy_upstream_phase_seconds). Recorded series (names containing ':')
// are not metrics of the binary and are skipped.
func MetricNames() ([]string, error) {
	exprs, err := Expressions()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, e := range exprs {
		// Resume right after each name: the character that ended the match
		// may start the next one.
		for i := 0; i < len(e); {
			loc := metricRef.FindStringSubmatchIndex(e[i:])
			if loc == nil {
				break
			}
			name := e[i+loc[2] : i+loc[3]]
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if strings.HasSuffix(name, suffix) {
					name = strings.TrimSuffix(name, suffix)
					break
				}
			}
			seen[name] = true
			i += loc[3]
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Expressions returns every PromQL expression of prometheus/rules.yml
// (recording and alerting rules) and grafana/dashboard.json (panel targets and
// template variable queries).
func Expressions() ([]string, error) {
	var out []string
	rules, err := Files.ReadFile("prometheus/rules.yml")
	if err != nil {
		return nil, err
	}
	var rf struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Record string `yaml:"record"`
				Alert  string `yaml:"alert"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(rules, &rf); err != nil {
		return nil, fmt.Errorf("prometheus/rules.yml: %v", err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Expr == "" {
				return nil, fmt.Errorf("prometheus/rules.yml: group %s: rule %s%s has no expr", g.Name, r.Record, r.Alert)
			}
			out = append(out, r.Expr)
		}
	}
	dash, err := Files.ReadFile("grafana/dashboard.json")
	if err != nil {
		return nil, err
	}
	var d any
	if err := json.Unmarshal(dash, &d); err != nil {
		return nil, fmt.Errorf("grafana/dashboard.json: %v", err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition" || k == "query") {
					out = append(out, s)
					continue
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(d)
	return out, nil
}
