package heatmap

import (
	"bytes"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Windows the page offers (?window=), each with its time-axis tick step.
var windowChoices = []struct {
	name string
	d    time.Duration
	step time.Duration
}{
	{"5m", 5 * time.Minute, time.Minute},
	{"15m", 15 * time.Minute, 5 * time.Minute},
	{"30m", 30 * time.Minute, 10 * time.Minute},
	{"1h", time.Hour, 15 * time.Minute},
}

// query is a validated set of page filters. Empty strings mean "all".
type query struct {
	Upstream, Phase, Source string
	Window                  time.Duration
	WindowName              string
	step                    time.Duration
}

const maxUpstreamLen = 1024

// parseQuery validates the page's query parameters against the recorder's
// window. Unknown parameters are ignored; repeated ones are an error.
func parseQuery(v url.Values, kept time.Duration) (query, error) {
	var q query
	get := func(k string) (string, error) {
		vs := v[k]
		if len(vs) > 1 {
			return "", fmt.Errorf("parameter %q given %d times", k, len(vs))
		}
		if len(vs) == 0 {
			return "", nil
		}
		return vs[0], nil
	}
	var err error
	if q.Upstream, err = get("upstream"); err != nil {
		return q, err
	}
	if len(q.Upstream) > maxUpstreamLen || !utf8.ValidString(q.Upstream) ||
		strings.IndexFunc(q.Upstream, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) >= 0 {
		return q, fmt.Errorf("invalid upstream %q", truncate(q.Upstream, 80))
	}
	if q.Phase, err = get("phase"); err != nil {
		return q, err
	}
	if q.Phase != "" && phaseIndex(q.Phase) < 0 {
		return q, fmt.Errorf("invalid phase %q: want one of %s", truncate(q.Phase, 40), strings.Join(phases[:], ", "))
	}
	if q.Source, err = get("source"); err != nil {
		return q, err
	}
	if q.Source != "" && sourceIndex(q.Source) < 0 {
		return q, fmt.Errorf("invalid source %q: want userspace or kernel", truncate(q.Source, 40))
	}
	w, err := get("window")
	if err != nil {
		return q, err
	}
	if w == "" {
		// The largest offered window the recorder keeps; else all of it.
		q.Window, q.WindowName, q.step = kept, fmtAgo(kept)[1:], kept/4
		for _, c := range windowChoices {
			if c.d <= kept {
				q.Window, q.WindowName, q.step = c.d, c.name, c.step
			}
		}
		return q, nil
	}
	for _, c := range windowChoices {
		if c.name == w {
			if c.d > kept {
				return q, fmt.Errorf("window %s is longer than the %s kept", w, fmtAgo(kept)[1:])
			}
			q.Window, q.WindowName, q.step = c.d, c.name, c.step
			return q, nil
		}
	}
	names := make([]string, len(windowChoices))
	for i, c := range windowChoices {
		names[i] = c.name
	}
	return q, fmt.Errorf("invalid window %q: want one of %s", truncate(w, 40), strings.Join(names, ", "))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Handler serves the heatmap page (GET or HEAD). Query parameters:
// upstream (exact name), phase (dns, connect, tls, ttfb, transfer, total),
// source (userspace, kernel), window (5m, 15m, 30m, 1h); bad values get 400.
func (r *Recorder) Handler() http.Handler {
	return http.HandlerFunc(r.serveHTTP)
}

func (r *Recorder) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q, err := parseQuery(req.URL.Query(), r.Window())
	if err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, r.buildPage(q)); err != nil {
		http.Error(w, "rendering heatmap: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// The page is self-contained: no scripts, no external resources.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.Write(buf.Bytes())
}

// Geometry of a heatmap panel (SVG user units = CSS pixels).
const (
	marginLeft   = 58
	marginRight  = 12
	marginTop    = 8
	marginBottom = 34
	plotWidth    = 540
	rowHeight    = 7
	plotHeight   = rowHeight * NumBuckets
	decHeight    = 56 // decision chart plot height
)

type option struct {
	Value, Label string
	Selected     bool
}

type page struct {
	Generated   string
	WindowName  string
	Interval    string
	Columns     int
	Upstreams   []option
	Phases      []option
	Sources     []option
	Windows     []option
	EmptyText   string
	Sections    []section
	Dropped     uint64
	FilterLabel string
}

type section struct {
	Upstream  string
	Decisions *decisionChart
	NoDecText string
	Rows      []phaseRow
}

type phaseRow struct {
	Phase, Description string
	Panels             []panel
}

type tick struct {
	X, Y, Label, Anchor string
}

type swatch struct {
	X, Fill string
}

type axes struct {
	Width, Height              int
	PlotX, PlotY, PlotW, PlotH int
	PlotRight, PlotBottom      int
	XTicks                     []tick
	TimeLabelX, TimeLabelY     string
	TimeLabel                  string
}

type panel struct {
	axes
	Upstream, Phase, Source string
	Summary                 string
	YTicks                  []tick
	LatLabelX, LatLabelY    string
	Cells                   []cell
	Legend                  []swatch
	LegendMax               string
}

type cell struct {
	X, Y, W, H string
	Fill       string
	Count      uint32
	Title      string
}

type decisionChart struct {
	axes
	Upstream string
	Bars     []bar
	MaxLabel string
	Legend   []decisionLegend
}

type bar struct {
	X, Y, W, H string
	Fill       string
	Decision   string
	Count      uint32
	Title      string
	// Kernel: some of these decisions were made on kernel (eBPF)
	// evidence (a kernel_* reason); the bar is outlined.
	Kernel bool
}

type decisionLegend struct {
	Name, Fill string
	Total      uint64
}

var decisionColors = [numDecision]string{
	"#4c78a8", // chosen
	"#9d9d9d", // skipped
	"#f58518", // fallthrough
	"#72b7b2", // hedged
	"#54a24b", // hedge_won
	"#b279a2", // half_open_trial
	"#e45756", // demoted (kernel evidence)
	"#ff9da6", // abandoned (kernel evidence)
	"#8c6d31", // other
}

func (r *Recorder) buildPage(q query) *page {
	now := r.now()
	cols := int((q.Window + r.interval - 1) / r.interval)
	first, ups := r.snapshot(now, cols)
	loc := now.Location()
	p := &page{
		Generated:  now.Format("2006-01-02 15:04:05 MST"),
		WindowName: q.WindowName,
		Interval:   fmtDuration(r.interval),
		Columns:    cols,
		Dropped:    r.Dropped(),
	}
	p.Upstreams = append(p.Upstreams, option{"", "all upstreams", q.Upstream == ""})
	for _, u := range r.Upstreams() {
		p.Upstreams = append(p.Upstreams, option{u, u, q.Upstream == u})
	}
	if q.Upstream != "" && !containsOption(p.Upstreams, q.Upstream) {
		p.Upstreams = append(p.Upstreams, option{q.Upstream, q.Upstream, true})
	}
	p.Phases = append(p.Phases, option{"", "dns … transfer", q.Phase == ""})
	for _, ph := range phases {
		p.Phases = append(p.Phases, option{ph, ph, q.Phase == ph})
	}
	p.Sources = []option{{"", "all sources", q.Source == ""}, {"userspace", "userspace", q.Source == "userspace"}, {"kernel", "kernel (eBPF)", q.Source == "kernel"}}
	for _, c := range windowChoices {
		if c.d <= r.Window() {
			p.Windows = append(p.Windows, option{c.name, "last " + c.name, q.WindowName == c.name})
		}
	}
	var filters []string
	for _, f := range []string{q.Upstream, q.Phase, q.Source} {
		if f != "" {
			filters = append(filters, f)
		}
	}
	if len(filters) > 0 {
		p.FilterLabel = strings.Join(filters, " · ")
	}

	colW := float64(plotWidth) / float64(cols)
	colTime := func(c int) string {
		return time.Unix(0, (first+int64(c))*int64(r.interval)).In(loc).Format("15:04:05")
	}
	ax := func(plotH int) axes {
		a := axes{
			PlotX: marginLeft, PlotY: marginTop, PlotW: plotWidth, PlotH: plotH,
			Width: marginLeft + plotWidth + marginRight, Height: marginTop + plotH + marginBottom,
		}
		a.PlotRight, a.PlotBottom = a.PlotX+a.PlotW, a.PlotY+a.PlotH
		for ago := q.Window; ago >= 0; ago -= q.step {
			x := float64(a.PlotX) + float64(plotWidth)*(1-float64(ago)/float64(q.Window))
			t := tick{X: fmtF(x), Y: strconv.Itoa(a.PlotBottom + 13), Label: fmtAgo(ago), Anchor: "middle"}
			if ago == 0 {
				t.Label, t.Anchor = "now", "end"
			} else if ago == q.Window {
				t.Anchor = "start"
			}
			a.XTicks = append(a.XTicks, t)
			if q.step <= 0 {
				break
			}
		}
		a.TimeLabelX, a.TimeLabelY = fmtF(float64(a.PlotX)+plotWidth/2), strconv.Itoa(a.PlotBottom+28)
		a.TimeLabel = fmt.Sprintf("time (%s columns, %s … %s)", fmtDuration(r.interval), colTime(0), colTime(cols-1))
		return a
	}

	for _, u := range ups {
		if q.Upstream != "" && u.Name != q.Upstream {
			continue
		}
		sec := section{Upstream: u.Name}
		for pi, ph := range phases {
			if q.Phase == "" && pi == phaseTotal || q.Phase != "" && q.Phase != ph {
				continue
			}
			row := phaseRow{Phase: ph, Description: phaseDescriptions[pi]}
			for _, s := range u.Series {
				if s.Phase != ph || q.Source != "" && s.Source != q.Source {
					continue
				}
				row.Panels = append(row.Panels, buildPanel(u.Name, s, ax(plotHeight), colW, colTime))
			}
			if len(row.Panels) > 0 {
				sec.Rows = append(sec.Rows, row)
			}
		}
		if u.Decisions != nil {
			sec.Decisions = buildDecisions(u.Name, u.Decisions, ax(decHeight), colW, colTime)
		} else {
			sec.NoDecText = "No upstream selection decisions recorded in this window."
		}
		if len(sec.Rows) == 0 && (q.Phase != "" || q.Source != "") {
			// Filtered out entirely: say so rather than show only decisions.
			if sec.Decisions == nil {
				continue
			}
		}
		p.Sections = append(p.Sections, sec)
	}
	if len(p.Sections) == 0 {
		switch {
		case len(ups) == 0:
			p.EmptyText = fmt.Sprintf("No upstream requests observed in the last %s. The heatmap fills in as modproxy fetches from its upstreams; requests served from the cache do not appear here.", q.WindowName)
		default:
			p.EmptyText = fmt.Sprintf("No data matches %s in the last %s.", p.FilterLabel, q.WindowName)
		}
	}
	return p
}

func containsOption(opts []option, v string) bool {
	for _, o := range opts {
		if o.Value == v {
			return true
		}
	}
	return false
}

func buildPanel(upstream string, s *seriesData, a axes, colW float64, colTime func(int) string) panel {
	pn := panel{axes: a, Upstream: upstream, Phase: s.Phase, Source: s.Source}
	pn.Summary = fmt.Sprintf("%s %s · median %s · p99 %s", fmtCount(s.Total), plural(s.Total, "request", "requests"),
		bucketLabel(quantileBucket(&s.ByBucket, s.Total, 0.5)), bucketLabel(quantileBucket(&s.ByBucket, s.Total, 0.99)))
	for _, ms := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond, time.Second, 10 * time.Second} {
		for j, b := range bucketBounds {
			if b == ms {
				y := a.PlotBottom - (j+1)*rowHeight
				pn.YTicks = append(pn.YTicks, tick{X: strconv.Itoa(a.PlotX - 5), Y: strconv.Itoa(y), Label: fmtDur(ms), Anchor: "end"})
			}
		}
	}
	pn.LatLabelX, pn.LatLabelY = "14", strconv.Itoa(a.PlotY+a.PlotH/2)
	w := fmtF(colW)
	for c, counts := range s.Counts {
		for b, n := range counts {
			if n == 0 {
				continue
			}
			pn.Cells = append(pn.Cells, cell{
				X:     fmtF(float64(a.PlotX) + float64(c)*colW),
				Y:     strconv.Itoa(a.PlotBottom - (b+1)*rowHeight),
				W:     w,
				H:     strconv.Itoa(rowHeight),
				Fill:  heatColor(n, s.Max),
				Count: n,
				Title: fmt.Sprintf("%s %s at %s: %d %s", s.Phase, bucketLabel(b), colTime(c), n, plural(uint64(n), "request", "requests")),
			})
		}
	}
	const swatches = 8
	for i := range swatches {
		t := float64(i) / (swatches - 1)
		pn.Legend = append(pn.Legend, swatch{X: strconv.Itoa(i * 10), Fill: rampColor(t)})
	}
	pn.LegendMax = fmtCount(uint64(s.Max))
	return pn
}

func buildDecisions(upstream string, d *decisionData, a axes, colW float64, colTime func(int) string) *decisionChart {
	dc := &decisionChart{axes: a, Upstream: upstream, MaxLabel: fmtCount(uint64(d.Max))}
	w := fmtF(colW)
	for c := range d.Counts {
		base := float64(a.PlotBottom)
		for k, n := range d.Counts[c] {
			if n == 0 {
				continue
			}
			h := float64(n) / float64(d.Max) * float64(a.PlotH)
			base -= h
			var reasons []string
			kernel := false
			for j, rn := range d.Reasons[c][k] {
				if rn == 0 {
					continue
				}
				name := "other"
				if j < len(d.Names) {
					name = d.Names[j]
				}
				if name == "" {
					name = "no reason"
				}
				kernel = kernel || strings.HasPrefix(name, "kernel_")
				reasons = append(reasons, fmt.Sprintf("%s %d", name, rn))
			}
			dc.Bars = append(dc.Bars, bar{
				X: fmtF(float64(a.PlotX) + float64(c)*colW), Y: fmtF(base), W: w, H: fmtF(h),
				Fill: decisionColors[k], Decision: decisions[k], Count: n,
				Title:  fmt.Sprintf("%s at %s: %d (%s)", decisions[k], colTime(c), n, strings.Join(reasons, ", ")),
				Kernel: kernel,
			})
		}
	}
	for k, tot := range d.Totals {
		if tot > 0 {
			dc.Legend = append(dc.Legend, decisionLegend{Name: decisions[k], Fill: decisionColors[k], Total: tot})
		}
	}
	return dc
}

// quantileBucket returns the bucket holding quantile q of the counts.
func quantileBucket(by *[NumBuckets]uint64, total uint64, q float64) int {
	rank := uint64(math.Ceil(q * float64(total)))
	var cum uint64
	for b, n := range by {
		cum += n
		if cum >= rank && cum > 0 {
			return b
		}
	}
	return NumBuckets - 1
}

// heatColor maps a count to a colour on a log scale relative to max.
func heatColor(n, maxN uint32) string {
	if maxN <= 1 {
		return rampColor(1)
	}
	return rampColor(math.Log(float64(n)) / math.Log(float64(maxN)))
}

// rampColor interpolates a yellow–orange–red–dark-red ramp (ColorBrewer
// YlOrRd), t in [0, 1]; even the lowest count stands out from the grey plot.
func rampColor(t float64) string {
	stops := [...][3]float64{{254, 217, 118}, {253, 141, 60}, {227, 26, 28}, {103, 0, 13}}
	t = math.Max(0, math.Min(1, t))
	x := t * float64(len(stops)-1)
	i := min(int(x), len(stops)-2)
	f := x - float64(i)
	var c [3]int
	for k := range c {
		c[k] = int(math.Round(stops[i][k] + (stops[i+1][k]-stops[i][k])*f))
	}
	return fmt.Sprintf("#%02x%02x%02x", c[0], c[1], c[2])
}

func fmtF(x float64) string { return strconv.FormatFloat(math.Round(x*100)/100, 'f', -1, 64) }

func fmtAgo(d time.Duration) string {
	if d%time.Minute == 0 {
		return "-" + strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return "-" + strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// fmtDuration is time.Duration.String without trailing zero units ("10s", "1h", "1m30s").
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func fmtCount(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

var pageTemplate = template.Must(template.New("page").Parse(pageHTML))
