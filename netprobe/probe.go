package netprobe

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/module"
)

// DefaultProbeModule is the module RunProbe fetches when ProbeOptions.Modules
// is empty: small, public and long-lived.
const DefaultProbeModule = "rsc.io/quote@v1.5.2"

// ProbeOptions configures RunProbe.
type ProbeOptions struct {
	// Upstreams are the GOPROXY base URLs to probe (default: the Probe's
	// configured upstreams).
	Upstreams []string
	// Modules are "path@version" (default DefaultProbeModule).
	Modules []string
	// Rounds is how many times each request is repeated (default 3). The
	// first request to each upstream uses a fresh connection, the others
	// reuse it when the upstream keeps it alive.
	Rounds int
}

// ProbeReport is the result of RunProbe.
type ProbeReport struct {
	Started   time.Time       `json:"started"`
	Duration  float64         `json:"duration_seconds"`
	Modules   []string        `json:"modules"`
	Rounds    int             `json:"rounds"`
	Upstreams []UpstreamProbe `json:"upstreams"`
}

// UpstreamProbe holds the requests made to one upstream.
type UpstreamProbe struct {
	Upstream string        `json:"upstream"`
	Requests []ProbeResult `json:"requests"`
}

// ProbeResult is one timed request.
type ProbeResult struct {
	Round   int     `json:"round"`
	Module  string  `json:"module"`
	Kind    string  `json:"kind"`
	URL     string  `json:"url"`
	Offset  float64 `json:"offset_seconds"` // start, relative to the run's start
	Status  int     `json:"status,omitempty"`
	Proto   string  `json:"proto,omitempty"`
	Reused  bool    `json:"reused"`
	Bytes   int64   `json:"bytes"`
	Outcome string  `json:"outcome"`
	Error   string  `json:"error,omitempty"`
	// Phases maps phase name to seconds (only the phases that happened:
	// dns, connect and tls only on new connections).
	Phases map[string]float64 `json:"phases"`
	// KernelPhases are the eBPF measurements of the same request, when
	// kernel telemetry is attached: connect, tls and tls_hello (new
	// connections) and ttfb (HTTP/1.1 only).
	KernelPhases map[string]float64 `json:"kernel_phases,omitempty"`
}

// recorder collects one request's phases for RunProbe (context value).
type recorderKey struct{}

type recorder struct {
	mu      sync.Mutex
	phases  map[string]time.Duration
	kphases map[string]time.Duration // kernel telemetry
	status  int
	proto   string
	outcome string
	reused  bool
	n       int64
	err     error
}

func (r *recorder) phase(name string, d time.Duration) {
	r.mu.Lock()
	r.phases[name] = d
	r.mu.Unlock()
}

func (r *recorder) kernelPhase(name string, d time.Duration) {
	r.mu.Lock()
	if r.kphases == nil {
		r.kphases = make(map[string]time.Duration)
	}
	r.kphases[name] = d
	r.mu.Unlock()
}

func (r *recorder) finish(status int, proto, outcome string, reused bool, n int64, err error) {
	r.mu.Lock()
	r.status, r.proto, r.outcome, r.reused, r.n, r.err = status, proto, outcome, reused, n, err
	r.mu.Unlock()
}

var probeKinds = []string{KindList, KindInfo, KindMod, KindZip}

// RunProbe times GOPROXY requests (list, info, mod, zip of each module)
// through each upstream with p's client, Rounds times. Request failures are
// recorded in the report, not returned; the error is for bad options and
// cancellation.
func RunProbe(ctx context.Context, p *Probe, opts ProbeOptions) (*ProbeReport, error) {
	ups := opts.Upstreams
	if len(ups) == 0 {
		for _, u := range p.upstreams {
			ups = append(ups, u.name)
		}
	}
	if len(ups) == 0 {
		return nil, errorf("probe: no upstreams")
	}
	mods := opts.Modules
	if len(mods) == 0 {
		mods = []string{DefaultProbeModule}
	}
	type modv struct{ path, version, escPath, escVersion string }
	var parsed []modv
	for _, m := range mods {
		path, version, ok := strings.Cut(m, "@")
		if !ok || version == "" {
			return nil, errorf("probe: module %q: want path@version", m)
		}
		ep, err := module.EscapePath(path)
		if err != nil {
			return nil, errorf("probe: module %q: %w", m, err)
		}
		ev, err := module.EscapeVersion(version)
		if err != nil {
			return nil, errorf("probe: module %q: %w", m, err)
		}
		parsed = append(parsed, modv{path, version, ep, ev})
	}
	rounds := max(opts.Rounds, 1)
	if opts.Rounds == 0 {
		rounds = 3
	}
	rep := &ProbeReport{Started: time.Now(), Modules: mods, Rounds: rounds}
	for _, up := range ups {
		base := strings.TrimRight(up, "/")
		up := UpstreamProbe{Upstream: base}
		p.CloseIdleConnections() // the first request dials afresh
		for round := 1; round <= rounds; round++ {
			for _, m := range parsed {
				for _, kind := range probeKinds {
					u := base + "/" + m.escPath + "/@v/"
					switch kind {
					case KindList:
						u += "list"
					default:
						u += m.escVersion + "." + kind
					}
					res := probeOne(ctx, p, u, rep.Started)
					res.Round, res.Module, res.Kind = round, m.path+"@"+m.version, kind
					up.Requests = append(up.Requests, res)
					if err := ctx.Err(); err != nil {
						return nil, errorf("probe: %w", err)
					}
				}
			}
		}
		rep.Upstreams = append(rep.Upstreams, up)
	}
	rep.Duration = time.Since(rep.Started).Seconds()
	return rep, nil
}

// probeOne makes one GET request, reads the body to EOF and returns its
// timings.
func probeOne(ctx context.Context, p *Probe, u string, runStart time.Time) ProbeResult {
	rec := &recorder{phases: make(map[string]time.Duration)}
	res := ProbeResult{URL: u, Offset: time.Since(runStart).Seconds(), Phases: map[string]float64{}}
	req, err := http.NewRequestWithContext(context.WithValue(ctx, recorderKey{}, rec), http.MethodGet, u, nil)
	if err != nil {
		res.Outcome, res.Error = OutcomeClientError, err.Error()
		return res
	}
	resp, err := p.Client().Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if k := p.kernel.Load(); k != nil {
		// Deliver this request's kernel events now rather than at the next poll.
		if ferr := k.Flush(); ferr != nil {
			p.cfg.Logger.Debug("netprobe: flushing kernel events", "err", ferr)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for k, d := range rec.phases {
		res.Phases[k] = d.Seconds()
	}
	for k, d := range rec.kphases {
		if res.KernelPhases == nil {
			res.KernelPhases = map[string]float64{}
		}
		res.KernelPhases[k] = d.Seconds()
	}
	res.Status, res.Proto, res.Outcome, res.Reused, res.Bytes = rec.status, rec.proto, rec.outcome, rec.reused, rec.n
	if err != nil {
		res.Error = err.Error()
	} else if res.Status >= 400 {
		res.Error = http.StatusText(res.Status)
	}
	return res
}

// WriteJSON writes the report as indented JSON.
func (r *ProbeReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return errorf("probe: write JSON: %w", err)
	}
	return nil
}

// waterfall segments: phase, bar character.
var waterfallSegments = []struct {
	phase string
	char  byte
}{
	{PhaseDNS, 'D'}, {PhaseConnect, 'C'}, {PhaseTLS, 'T'}, {"", '.'}, {PhaseTTFB, 'W'}, {PhaseTransfer, 'R'},
}

const barWidth = 48

// WriteText writes, per upstream, a waterfall of every request's phases
// (ASCII bars on a common scale) and a summary, then a heatmap of total
// latency over the run: one row per upstream and kind, one column per round
// and module, shaded on a log scale.
func (r *ProbeReport) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "modproxy probe: %d upstream(s), %d module(s), %d round(s) in %s\n",
		len(r.Upstreams), len(r.Modules), r.Rounds, secs(r.Duration))
	fmt.Fprintf(&b, "bars: D dns  C connect  T tls  . other  W wait (ttfb)  R receive (transfer)\n")
	for _, up := range r.Upstreams {
		maxTotal := 0.0
		for _, q := range up.Requests {
			maxTotal = max(maxTotal, q.Phases[PhaseTotal])
		}
		fmt.Fprintf(&b, "\n%s  (full bar = %s)\n", up.Upstream, secs(maxTotal))
		for _, q := range up.Requests {
			conn := "new  "
			if q.Reused {
				conn = "reuse"
			}
			status := q.Outcome
			if q.Status != 0 {
				status = fmt.Sprint(q.Status)
			}
			fmt.Fprintf(&b, "  r%-2d %-5s %s %-13s %9s |%-*s|", q.Round, q.Kind, conn, status,
				secs(q.Phases[PhaseTotal]), barWidth, bar(q, maxTotal))
			if q.Error != "" {
				fmt.Fprintf(&b, " %s", truncate(q.Error, 60))
			}
			b.WriteByte('\n')
		}
		kernel := false
		for _, q := range up.Requests {
			kernel = kernel || len(q.KernelPhases) > 0
		}
		if kernel {
			fmt.Fprintf(&b, "  %-9s %9s %9s %9s   %9s %9s %9s\n", "phase", "min", "median", "max", "kernel min", "median", "max")
		} else {
			fmt.Fprintf(&b, "  %-9s %9s %9s %9s\n", "phase", "min", "median", "max")
		}
		rows := Phases
		if kernel {
			rows = append(slices.Clone(Phases[:2]), append([]string{KernelPhaseTLSHello}, Phases[2:]...)...)
		}
		for _, ph := range rows {
			user, kern := phaseRange(up.Requests, ph, false), phaseRange(up.Requests, ph, true)
			if user == "" && kern == "" {
				continue
			}
			if user == "" {
				user = fmt.Sprintf("%9s %9s %9s", "-", "-", "-")
			}
			if kernel && kern == "" {
				kern = fmt.Sprintf("%10s %9s %9s", "-", "-", "-")
			}
			line := fmt.Sprintf("  %-9s %s", ph, user)
			if kernel {
				line += "   " + kern
			}
			b.WriteString(strings.TrimRight(line, " ") + "\n")
		}
	}
	r.writeHeatmap(&b)
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return errorf("probe: write report: %w", err)
	}
	return nil
}

// phaseRange formats the min, median and max of a phase over requests
// (userspace or kernel), or "" when no request has it.
func phaseRange(reqs []ProbeResult, phase string, kernel bool) string {
	var v []float64
	for _, q := range reqs {
		m := q.Phases
		if kernel {
			m = q.KernelPhases
		}
		if d, ok := m[phase]; ok {
			v = append(v, d)
		}
	}
	if len(v) == 0 {
		return ""
	}
	slices.Sort(v)
	w := 9
	if kernel {
		w = 10 // under "kernel min"
	}
	return fmt.Sprintf("%*s %9s %9s", w, secs(v[0]), secs(v[len(v)/2]), secs(v[len(v)-1]))
}

func bar(q ProbeResult, maxTotal float64) string {
	if maxTotal <= 0 {
		return ""
	}
	total := q.Phases[PhaseTotal]
	other := total
	for _, s := range waterfallSegments {
		if s.phase != "" {
			other -= q.Phases[s.phase]
		}
	}
	var b strings.Builder
	acc, drawn := 0.0, 0
	for _, s := range waterfallSegments {
		d := q.Phases[s.phase]
		if s.phase == "" {
			d = max(0, other)
		}
		if d <= 0 {
			continue
		}
		acc += d
		end := int(math.Round(acc / maxTotal * barWidth))
		if end <= drawn && d/maxTotal > 0.005 {
			end = drawn + 1 // visible phases get at least one column
		}
		for ; drawn < min(end, barWidth); drawn++ {
			b.WriteByte(s.char)
		}
	}
	return b.String()
}

var shades = []rune{'░', '▒', '▓', '█'}

func (r *ProbeReport) writeHeatmap(b *strings.Builder) {
	lo, hi := math.Inf(1), 0.0
	for _, up := range r.Upstreams {
		for _, q := range up.Requests {
			if t, ok := q.Phases[PhaseTotal]; ok && t > 0 {
				lo, hi = min(lo, t), max(hi, t)
			}
		}
	}
	if hi == 0 {
		return
	}
	fmt.Fprintf(b, "\nheatmap of total latency (columns: rounds × modules in time order; x = failed)\n")
	fmt.Fprintf(b, "  ░ %s  ▒  ▓  █ %s (log scale)\n", secs(lo), secs(hi))
	name := func(u string) string { return truncate(u, 40) }
	width := 0
	for _, up := range r.Upstreams {
		width = max(width, len([]rune(name(up.Upstream))))
	}
	for _, up := range r.Upstreams {
		for _, kind := range probeKinds {
			var row strings.Builder
			for _, q := range up.Requests {
				if q.Kind != kind {
					continue
				}
				t, ok := q.Phases[PhaseTotal]
				switch {
				case !ok || q.Error != "" && q.Status == 0:
					row.WriteRune('x')
				default:
					row.WriteRune(shade(t, lo, hi))
				}
			}
			fmt.Fprintf(b, "  %-*s %-5s %s\n", width, name(up.Upstream), kind, row.String())
		}
	}
}

func shade(t, lo, hi float64) rune {
	if hi <= lo*1.0001 {
		return shades[0]
	}
	f := (math.Log(t) - math.Log(lo)) / (math.Log(hi) - math.Log(lo))
	i := int(f * float64(len(shades)))
	return shades[min(len(shades)-1, max(0, i))]
}

func secs(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
