package netprobe

import (
	"encoding/json"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Snapshot is the state of every known upstream, as served by
// DebugHandler.
type Snapshot struct {
	Generated time.Time        `json:"generated"`
	Upstreams []UpstreamStatus `json:"upstreams"`
}

// UpstreamStatus is one upstream's health and recent timings.
type UpstreamStatus struct {
	Upstream   string  `json:"upstream"`
	Configured bool    `json:"configured"`
	Score      float64 `json:"score"`
	State      string  `json:"state"`   // healthy, degraded, unhealthy, open
	Circuit    string  `json:"circuit"` // closed, open, half_open
	// HedgeAfterSeconds is absent while there are too few samples.
	HedgeAfterSeconds *float64         `json:"hedge_after_seconds,omitempty"`
	Connections       ConnectionStats  `json:"connections"`
	Requests          map[string]int64 `json:"requests"` // by outcome, since start
	Window            WindowCounts     `json:"window"`   // last 5 minutes
	// Phases holds recent p50/p99 per phase and source: userspace
	// (httptrace) and, when the eBPF integration feeds ObservePhase,
	// kernel, side by side.
	Phases    []PhaseSummary  `json:"phases"`
	Errors    []ErrorRecord   `json:"errors"` // last 5, oldest first
	Decisions []DecisionCount `json:"decisions"`
}

// ConnectionStats counts connections obtained by requests.
type ConnectionStats struct {
	New        int64   `json:"new"`
	Reused     int64   `json:"reused"`
	ReuseRatio float64 `json:"reuse_ratio"` // reused / (new + reused)
}

// Snapshot returns the state of every configured or seen upstream,
// configured ones first.
func (p *Probe) Snapshot() Snapshot {
	var names []string
	for _, u := range p.upstreams {
		names = append(names, u.name)
	}
	names = append(names, p.cfg.NamedUpstreams...)
	var extra []string
	for _, n := range append(p.health.upstreams(), p.stats.upstreams()...) {
		if !slices.Contains(names, n) && !slices.Contains(extra, n) {
			extra = append(extra, n)
		}
	}
	slices.Sort(extra)
	configured := len(names)
	names = append(names, extra...)

	snap := Snapshot{Generated: p.cfg.Clock(), Upstreams: make([]UpstreamStatus, 0, len(names))}
	for i, n := range names {
		h := p.health.snapshot(n)
		st := UpstreamStatus{
			Upstream:    n,
			Configured:  i < configured,
			Score:       h.Score,
			State:       h.State,
			Circuit:     h.Circuit,
			Connections: ConnectionStats{New: h.NewConns, Reused: h.Reused},
			Requests:    h.Outcomes,
			Window:      h.Window,
			Phases:      p.stats.summaries(n),
			Errors:      h.Errors,
			Decisions:   h.Decisions,
		}
		if h.HedgeOK {
			s := h.HedgeAfter.Seconds()
			st.HedgeAfterSeconds = &s
		}
		if t := h.NewConns + h.Reused; t > 0 {
			st.Connections.ReuseRatio = float64(h.Reused) / float64(t)
		}
		if st.Phases == nil {
			st.Phases = []PhaseSummary{}
		}
		if st.Errors == nil {
			st.Errors = []ErrorRecord{}
		}
		if st.Decisions == nil {
			st.Decisions = []DecisionCount{}
		}
		snap.Upstreams = append(snap.Upstreams, st)
	}
	return snap
}

// DebugHandler serves the /debug/upstreams page: a self-contained HTML
// page, or JSON (the Snapshot) with ?format=json. It serves the same
// content on whatever path it is mounted.
func (p *Probe) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		snap := p.Snapshot()
		w.Header().Set("Cache-Control", "no-store")
		if r.URL.Query().Get("format") == "json" {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			if err := enc.Encode(snap); err != nil {
				p.cfg.Logger.Debug("netprobe: writing debug JSON", "err", err)
			}
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := debugPage.Execute(w, debugView(snap)); err != nil {
			p.cfg.Logger.Debug("netprobe: writing debug page", "err", err)
		}
	})
}

// phaseRow is one phase with both sources side by side.
type phaseRow struct {
	Phase        string
	User, Kernel *PhaseSummary
}

type upstreamView struct {
	UpstreamStatus
	Rows []phaseRow
}

type pageView struct {
	Generated string
	Upstreams []upstreamView
}

func debugView(s Snapshot) pageView {
	v := pageView{Generated: s.Generated.Format(time.RFC3339)}
	for _, u := range s.Upstreams {
		uv := upstreamView{UpstreamStatus: u}
		for _, ph := range Phases {
			row := phaseRow{Phase: ph}
			for i := range u.Phases {
				ps := &u.Phases[i]
				if ps.Phase != ph {
					continue
				}
				if ps.Source == SourceKernel {
					row.Kernel = ps
				} else {
					row.User = ps
				}
			}
			if row.User != nil || row.Kernel != nil {
				uv.Rows = append(uv.Rows, row)
			}
		}
		v.Upstreams = append(v.Upstreams, uv)
	}
	return v
}

func fmtSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(10 * time.Microsecond).String()
}

var debugPage = template.Must(template.New("upstreams").Funcs(template.FuncMap{
	"dur":   fmtSeconds,
	"pct":   formatPct,
	"score": formatScore,
	"ts":    func(t time.Time) string { return t.Format("15:04:05.000") },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>modproxy upstreams</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.8em;font-family:monospace}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-family:monospace}
.healthy{color:#186a1c}.degraded{color:#9a6700}.unhealthy,.open{color:#b3261e;font-weight:bold}
.muted{color:#888}
</style></head><body>
<h1>Upstreams</h1>
<p class="muted">Generated {{.Generated}} · <a href="?format=json">JSON</a></p>
<table><tr><th>upstream</th><th>score</th><th>state</th><th>circuit</th><th>hedge after</th><th>conn reuse</th><th>requests (5 min)</th><th>failures (5 min)</th></tr>
{{range .Upstreams}}<tr><td><a href="#{{.Upstream}}">{{.Upstream}}</a>{{if not .Configured}} <span class="muted">(not configured)</span>{{end}}</td>
<td class="n">{{score .Score}}</td><td class="{{.State}}">{{.State}}</td><td>{{.Circuit}}</td>
<td class="n">{{with .HedgeAfterSeconds}}{{dur .}}{{else}}<span class="muted">n/a</span>{{end}}</td>
<td class="n">{{pct .Connections.ReuseRatio}} ({{.Connections.Reused}}/{{.Connections.New}})</td>
<td class="n">{{.Window.Requests}}</td><td class="n">{{.Window.Failures}}</td></tr>
{{end}}</table>
{{range .Upstreams}}
<h2 id="{{.Upstream}}">{{.Upstream}}</h2>
<table><tr><th rowspan="2">phase</th><th colspan="3">userspace (httptrace)</th><th colspan="3">kernel (eBPF)</th></tr>
<tr><th>p50</th><th>p99</th><th>n</th><th>p50</th><th>p99</th><th>n</th></tr>
{{range .Rows}}<tr><td>{{.Phase}}</td>
{{with .User}}<td class="n">{{dur .P50}}</td><td class="n">{{dur .P99}}</td><td class="n">{{.Count}}</td>{{else}}<td class="muted" colspan="3">—</td>{{end}}
{{with .Kernel}}<td class="n">{{dur .P50}}</td><td class="n">{{dur .P99}}</td><td class="n">{{.Count}}</td>{{else}}<td class="muted" colspan="3">—</td>{{end}}</tr>
{{else}}<tr><td colspan="7" class="muted">no requests yet</td></tr>{{end}}</table>
<table><tr><th>outcome</th><th>requests</th></tr>
{{range $k, $v := .Requests}}<tr><td>{{$k}}</td><td class="n">{{$v}}</td></tr>{{else}}<tr><td colspan="2" class="muted">none</td></tr>{{end}}</table>
<table><tr><th>decision</th><th>reason</th><th>count</th></tr>
{{range .Decisions}}<tr><td>{{.Decision}}</td><td>{{.Reason}}</td><td class="n">{{.Count}}</td></tr>{{else}}<tr><td colspan="3" class="muted">none</td></tr>{{end}}</table>
<table><tr><th>time</th><th>kind</th><th>outcome</th><th>last errors</th></tr>
{{range .Errors}}<tr><td>{{ts .Time}}</td><td>{{.Kind}}</td><td>{{.Outcome}}</td><td>{{.Error}}</td></tr>{{else}}<tr><td colspan="4" class="muted">none</td></tr>{{end}}</table>
{{end}}
</body></html>
`))

func formatPct(f float64) string { return strconv.FormatFloat(f*100, 'f', 0, 64) + "%" }

func formatScore(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) }
