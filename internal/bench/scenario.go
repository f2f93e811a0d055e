package main

import (
	"context"
	"sort"
	"time"
)

// A scenario is one group of measurements.
//
// To add one, put it in its own file of this package and register it from
// init:
//
//	func init() {
//		register(scenario{Name: "prewarm", Order: 50, Desc: "…", Run: runPrewarm})
//	}
//
// The Env gives it a fake upstream (Env.Upstream), a modproxy subprocess
// with a fresh store (Env.StartServer; Server.Pid for cpuTime, readMem,
// sampleRSS), temp dirs (Env.TempDir) and the go command (Env.GoBin).
// Helpers shared by the built-in scenarios: smallModules, bigModule,
// artifactURLs, fill, runLoad, fetch, newClient, goModDownload. Results
// with a Target (atMost, atLeast) are marked met or MISSED in the table. Run starts what it needs
// through the Env (fake upstreams, modproxy servers), measures, and returns
// its results; main stops any server it left running. Run must return
// when ctx is done (the scenario's Timeout, Ctrl-C or --timeout).
type scenario struct {
	Name  string // short, used by --only and --skip
	Desc  string
	Order int // run order, ascending; ties by Name
	// Timeout bounds Run; default 60 s.
	Timeout time.Duration
	Run     func(ctx context.Context, env *Env) ([]Result, error)
}

func (s scenario) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return time.Minute
}

// scenarios is the registry; files of this package add to it from init
// functions with register.
var scenarios []scenario

// register adds a scenario to the registry. Call it from init.
func register(s scenario) { scenarios = append(scenarios, s) }

func sortedScenarios() []scenario {
	out := append([]scenario(nil), scenarios...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Order != out[j].Order {
			return out[i].Order < out[j].Order
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Result is one measured figure, optionally with a target.
type Result struct {
	Scenario string  `json:"scenario"` // set by main
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	// Target, when set, is checked against Value: Max is an upper bound,
	// otherwise a lower bound.
	Target *Target `json:"target,omitempty"`
	Note   string  `json:"note,omitempty"`
}

// Target is a goal from the issue.
type Target struct {
	Limit float64 `json:"limit"`
	Max   bool    `json:"max"` // Value must be <= Limit; else >= Limit
}

// Met reports whether r meets its target; ok is false when it has none.
func (r Result) Met() (met, ok bool) {
	if r.Target == nil {
		return false, false
	}
	if r.Target.Max {
		return r.Value <= r.Target.Limit, true
	}
	return r.Value >= r.Target.Limit, true
}

// atMost and atLeast make targets.
func atMost(v float64) *Target  { return &Target{Limit: v, Max: true} }
func atLeast(v float64) *Target { return &Target{Limit: v} }
