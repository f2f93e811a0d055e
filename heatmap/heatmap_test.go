package heatmap

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/html"
)

var t0 = time.Date(2025, 3, 14, 10, 0, 0, 0, time.UTC)

func TestBucketBoundaries(t *testing.T) {
	if NumBuckets != 27 {
		t.Fatalf("NumBuckets = %d", NumBuckets)
	}
	for i := 1; i < len(bucketBounds); i++ {
		if bucketBounds[i] <= bucketBounds[i-1] {
			t.Fatalf("bounds not increasing at %d", i)
		}
	}
	for j, b := range bucketBounds {
		if got := bucketIndex(b); got != j {
			t.Errorf("bucketIndex(%v) = %d, want %d (upper bound inclusive)", b, got, j)
		}
		if got := bucketIndex(b + 1); got != j+1 {
			t.Errorf("bucketIndex(%v+1ns) = %d, want %d", b, got, j+1)
		}
	}
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{{0, 0}, {time.Microsecond, 0}, {12 * time.Millisecond, 7}, {time.Hour, NumBuckets - 1}} {
		if got := bucketIndex(tc.d); got != tc.want {
			t.Errorf("bucketIndex(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
	for i, want := range map[int]string{0: "≤0.5ms", 1: "0.5–1ms", 7: "10–15ms", 16: "600ms–1s", 17: "1–1.5s", NumBuckets - 1: ">60s"} {
		if got := bucketLabel(i); got != want {
			t.Errorf("bucketLabel(%d) = %q, want %q", i, got, want)
		}
	}
	if lo, hi := BucketRange(NumBuckets - 1); lo != 60*time.Second || hi != -1 {
		t.Errorf("BucketRange(last) = %v, %v", lo, hi)
	}
}

// column returns the counts of one series in the snapshot, per column.
func column(t *testing.T, r *Recorder, upstream, phase, source string, cols int) [][NumBuckets]uint32 {
	t.Helper()
	_, ups := r.snapshot(r.now(), cols)
	for _, u := range ups {
		if u.Name != upstream {
			continue
		}
		for _, s := range u.Series {
			if s.Phase == phase && s.Source == source {
				return s.Counts
			}
		}
	}
	return make([][NumBuckets]uint32, cols)
}

func TestRingRotation(t *testing.T) {
	clk := NewFakeClock(t0)
	r := NewRecorder(Options{Interval: 10 * time.Second, Window: time.Minute, Now: clk.Now})
	if r.slots != 6 || r.Window() != time.Minute {
		t.Fatalf("slots = %d, window %v", r.slots, r.Window())
	}
	const up = "https://a.example"
	b := bucketIndex(20 * time.Millisecond)
	// One observation in interval 0, two in 1, ... six in interval 5.
	for i := range 6 {
		for range i + 1 {
			r.Observe(up, "zip", "ttfb", "userspace", 20*time.Millisecond)
		}
		if i < 5 {
			clk.Advance(10 * time.Second)
		}
	}
	got := column(t, r, up, "ttfb", "userspace", 6)
	for c := range 6 {
		if got[c][b] != uint32(c+1) {
			t.Fatalf("column %d = %d, want %d", c, got[c][b], c+1)
		}
	}
	// Interval 6 reuses slot 0: interval 0 disappears, the rest shift left.
	clk.Advance(10 * time.Second)
	r.Observe(up, "zip", "ttfb", "userspace", 20*time.Millisecond)
	got = column(t, r, up, "ttfb", "userspace", 6)
	for c, want := range []uint32{2, 3, 4, 5, 6, 1} {
		if got[c][b] != want {
			t.Fatalf("after rotation column %d = %d, want %d", c, got[c][b], want)
		}
	}
	// A narrower view shows only the newest columns.
	if got := column(t, r, up, "ttfb", "userspace", 2); got[0][b] != 6 || got[1][b] != 1 {
		t.Fatalf("2-column view = %d %d", got[0][b], got[1][b])
	}
	// A straggler for an interval already recycled is dropped, not counted.
	g := (*r.upstreams.Load())[up].series[phaseIndex("ttfb")][0].Load()
	if g.add(r.epoch(t0), b) {
		t.Fatal("straggler for a recycled slot was counted")
	}
	// After a silent window nothing is left.
	clk.Advance(2 * time.Minute)
	if _, ups := r.snapshot(clk.Now(), 6); len(ups) != 0 {
		t.Fatalf("data left after a silent window: %d upstreams", len(ups))
	}
	// And the slots are reused cleanly.
	r.Observe(up, "zip", "ttfb", "userspace", time.Second)
	got = column(t, r, up, "ttfb", "userspace", 6)
	var sum uint32
	for _, c := range got {
		for _, n := range c {
			sum += n
		}
	}
	if sum != 1 || got[5][bucketIndex(time.Second)] != 1 {
		t.Fatalf("after reuse: sum %d", sum)
	}
}

func TestOptionsDefaults(t *testing.T) {
	r := NewRecorder(Options{})
	if r.Interval() != 10*time.Second || r.Window() != time.Hour || r.maxUpstreams != 16 {
		t.Fatalf("defaults: %v %v %d", r.Interval(), r.Window(), r.maxUpstreams)
	}
	r = NewRecorder(Options{Interval: time.Second, Window: 24 * time.Hour})
	if r.slots > maxSlots || r.Window() < 24*time.Hour {
		t.Fatalf("slots %d window %v", r.slots, r.Window())
	}
}

func TestUnknownLabelsAndCap(t *testing.T) {
	clk := NewFakeClock(t0)
	r := NewRecorder(Options{Interval: 10 * time.Second, Window: time.Minute, Now: clk.Now, MaxUpstreams: 2})
	r.Observe("u1", "mod", "bogus", "userspace", time.Millisecond)
	r.Observe("u1", "mod", "dns", "ebpf", time.Millisecond)
	if r.Dropped() != 2 || len(r.Upstreams()) != 0 {
		t.Fatalf("dropped %d, upstreams %v", r.Dropped(), r.Upstreams())
	}
	r.Observe("u1", "mod", "dns", "userspace", time.Millisecond)
	r.Observe("u2", "mod", "dns", "userspace", time.Millisecond)
	r.Observe("u3", "mod", "dns", "userspace", time.Millisecond)
	r.ObserveDecision("u4", "chosen", "healthy")
	if r.Dropped() != 4 || strings.Join(r.Upstreams(), ",") != "u1,u2" {
		t.Fatalf("dropped %d, upstreams %v", r.Dropped(), r.Upstreams())
	}
	// u2 stays busy; u1 idles for a whole window and makes room for u3.
	clk.Advance(time.Minute)
	r.Observe("u2", "mod", "dns", "userspace", time.Millisecond)
	r.Observe("u3", "mod", "dns", "userspace", time.Millisecond)
	if got := strings.Join(r.Upstreams(), ","); got != "u2,u3" {
		t.Fatalf("after eviction upstreams = %s", got)
	}
	// Reasons beyond the cap are folded into "other".
	for i := range maxReasons + 3 {
		r.ObserveDecision("u2", "skipped", fmt.Sprintf("reason%d", i))
	}
	_, ups := r.snapshot(clk.Now(), 6)
	d := ups[0].Decisions
	if d == nil || d.Totals[1] != maxReasons+3 || len(d.Names) != maxReasons || d.Reasons[5][1][maxReasons] != 3 {
		t.Fatalf("decisions %+v", d)
	}
}

func TestParseQuery(t *testing.T) {
	for _, tc := range []struct {
		q      string
		kept   time.Duration
		window time.Duration
		err    string
	}{
		{"", time.Hour, time.Hour, ""},
		{"", 20 * time.Minute, 15 * time.Minute, ""},
		{"", 3 * time.Minute, 3 * time.Minute, ""},
		{"window=15m", time.Hour, 15 * time.Minute, ""},
		{"window=1h&phase=ttfb&source=kernel&upstream=https://m.example/go", time.Hour, time.Hour, ""},
		{"phase=&source=&upstream=", time.Hour, time.Hour, ""},
		{"phase=total", time.Hour, time.Hour, ""},
		{"window=2h", time.Hour, 0, "invalid window"},
		{"window=1h", 30 * time.Minute, 0, "longer than"},
		{"window=15", time.Hour, 0, "invalid window"},
		{"phase=TTFB", time.Hour, 0, "invalid phase"},
		{"source=ebpf", time.Hour, 0, "invalid source"},
		{"upstream=a%20b", time.Hour, 0, "invalid upstream"},
		{"upstream=a%00", time.Hour, 0, "invalid upstream"},
		{"upstream=" + strings.Repeat("a", 2000), time.Hour, 0, "invalid upstream"},
		{"phase=dns&phase=tls", time.Hour, 0, "given 2 times"},
	} {
		v, err := url.ParseQuery(tc.q)
		if err != nil {
			t.Fatal(err)
		}
		q, err := parseQuery(v, tc.kept)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err = %v, want %q", tc.q, err, tc.err)
			}
			continue
		}
		if err != nil || q.Window != tc.window {
			t.Errorf("%q: window %v, err %v; want %v", tc.q, q.Window, err, tc.window)
		}
	}
}

func get(t *testing.T, h http.Handler, target string) (int, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
	return w.Code, w.Body.String()
}

type rendered struct {
	Upstream, Phase, Source, Decision string
	Count                             int
	Title                             string
}

// parsePage parses the page as HTML, checks that every inline SVG is
// well-formed XML, that nothing is loaded from elsewhere and no script runs,
// and returns the rect[data-count] elements.
func parsePage(t *testing.T, body string) []rendered {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatalf("page does not parse: %v", err)
	}
	var cells []rendered
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			attr := map[string]string{}
			for _, a := range n.Attr {
				attr[a.Key] = a.Val
			}
			switch n.Data {
			case "script", "img", "link", "iframe", "object":
				t.Errorf("page contains <%s>", n.Data)
			case "svg":
				var buf bytes.Buffer
				if err := html.Render(&buf, n); err != nil {
					t.Fatal(err)
				}
				dec := xml.NewDecoder(&buf)
				for {
					if _, err := dec.Token(); err == io.EOF {
						break
					} else if err != nil {
						t.Fatalf("SVG is not well-formed XML: %v", err)
					}
				}
			case "rect":
				if c, ok := attr["data-count"]; ok {
					n2, err := strconv.Atoi(c)
					if err != nil || n2 <= 0 {
						t.Errorf("rect data-count=%q", c)
					}
					r := rendered{Upstream: attr["data-upstream"], Phase: attr["data-phase"], Source: attr["data-source"], Decision: attr["data-decision"], Count: n2}
					if ch := n.FirstChild; ch != nil && ch.Data == "title" && ch.FirstChild != nil {
						r.Title = ch.FirstChild.Data
					}
					cells = append(cells, r)
				}
			}
			for _, k := range []string{"src", "href"} {
				if v, ok := attr[k]; ok {
					t.Errorf("<%s %s=%q>: page must be self-contained", n.Data, k, v)
				}
			}
			for k := range attr {
				if strings.HasPrefix(k, "on") {
					t.Errorf("<%s %s>: no scripts", n.Data, k)
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	return cells
}

var cellTitle = regexp.MustCompile(`^(dns|connect|tls|ttfb|transfer|total) (≤0\.5ms|>60s|[0-9.]+(ms|s)?–[0-9.]+(ms|s)) at \d\d:\d\d:\d\d: (1 request|\d+ requests)$`)

func TestPage(t *testing.T) {
	end := time.Date(2025, 3, 14, 10, 42, 10, 0, time.UTC)
	clk := NewFakeClock(end)
	r := NewRecorder(Options{Now: clk.Now})
	FeedSynthetic(r, clk, end)
	h := r.Handler()

	code, body := get(t, h, "/debug/heatmap")
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	for _, want := range []string{"-60m", "-45m", "now", ">1ms<", ">10ms<", ">100ms<", ">1s<", ">10s<", "latency", "per cell", SyntheticPrimary, SyntheticBackup, "fallthrough"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	cells := parsePage(t, body)
	sums := map[string]int{}
	for _, c := range cells {
		if c.Decision != "" {
			sums["decision/"+c.Decision] += c.Count
			continue
		}
		if c.Upstream == "" || c.Phase == "" || c.Source == "" {
			t.Fatalf("cell without labels: %+v", c)
		}
		if !cellTitle.MatchString(c.Title) || !strings.HasPrefix(c.Title, c.Phase+" ") {
			t.Fatalf("cell title %q", c.Title)
		}
		sums[c.Phase+"/"+c.Source] += c.Count
	}
	// Every observation in the window is drawn once (the hour of synthetic
	// data spans 361 ten-second steps, the first of which is outside the window).
	_, ups := r.snapshot(end, 360)
	want := map[string]int{}
	for _, u := range ups {
		for _, s := range u.Series {
			if s.Phase != "total" {
				want[s.Phase+"/"+s.Source] += int(s.Total)
			}
		}
		if u.Decisions != nil {
			for k, n := range u.Decisions.Totals {
				if n > 0 {
					want["decision/"+decisions[k]] += int(n)
				}
			}
		}
	}
	if fmt.Sprint(sums) != fmt.Sprint(want) {
		t.Errorf("drawn counts %v\nwant %v", sums, want)
	}
	for _, k := range []string{"dns/userspace", "connect/kernel", "tls/userspace", "ttfb/kernel", "transfer/userspace", "decision/hedged"} {
		if sums[k] == 0 {
			t.Errorf("nothing drawn for %s", k)
		}
	}
	if sums["total/userspace"] != 0 {
		t.Errorf("total drawn by default")
	}
}

func TestFilters(t *testing.T) {
	end := time.Date(2025, 3, 14, 10, 42, 10, 0, time.UTC)
	clk := NewFakeClock(end)
	r := NewRecorder(Options{Now: clk.Now})
	FeedSynthetic(r, clk, end)
	h := r.Handler()

	check := func(query string, ok func(rendered) bool) []rendered {
		t.Helper()
		code, body := get(t, h, "/?"+query)
		if code != 200 {
			t.Fatalf("%s: status %d", query, code)
		}
		cells := parsePage(t, body)
		if len(cells) == 0 {
			t.Fatalf("%s: no cells", query)
		}
		for _, c := range cells {
			if !ok(c) {
				t.Fatalf("%s: unexpected cell %+v", query, c)
			}
		}
		return cells
	}
	check("upstream="+url.QueryEscape(SyntheticBackup), func(c rendered) bool {
		return c.Upstream == SyntheticBackup || c.Decision != "" && c.Upstream == SyntheticBackup
	})
	check("phase=ttfb", func(c rendered) bool { return c.Decision != "" || c.Phase == "ttfb" })
	check("phase=total&source=userspace", func(c rendered) bool { return c.Decision != "" || c.Phase == "total" && c.Source == "userspace" })
	check("source=kernel", func(c rendered) bool { return c.Decision != "" || c.Source == "kernel" })
	// 15 minutes: the incident (-35m … -25m) is out of view, so no fallthrough.
	cells := check("window=15m", func(c rendered) bool { return c.Decision != "fallthrough" && c.Upstream == SyntheticPrimary })
	var n int
	for _, c := range cells {
		if c.Phase == "ttfb" && c.Source == "userspace" {
			n += c.Count
		}
	}
	_, ups := r.snapshot(end, 90)
	for _, s := range ups[0].Series {
		if s.Phase == "ttfb" && s.Source == "userspace" && uint64(n) != s.Total {
			t.Errorf("15m ttfb drawn %d, recorded %d", n, s.Total)
		}
	}

	for _, q := range []string{"phase=bogus", "window=2h", "window=0", "source=x", "upstream=%0a", "window=1h&window=15m"} {
		if code, body := get(t, h, "/?"+q); code != http.StatusBadRequest || !strings.Contains(body, "bad request") {
			t.Errorf("%s: status %d, %.200q", q, code, body)
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", w.Code)
	}
	// A valid but unknown upstream is not an error: it shows the empty state.
	code, body := get(t, h, "/?upstream=https://nobody.example")
	if code != 200 || !strings.Contains(body, "No data matches https://nobody.example") || len(parsePage(t, body)) != 0 {
		t.Errorf("unknown upstream: %d", code)
	}
}

func TestEmptyPage(t *testing.T) {
	r := NewRecorder(Options{})
	w := httptest.NewRecorder()
	r.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if w.Code != 200 || w.Header().Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("status %d, %q", w.Code, w.Header().Get("Content-Type"))
	}
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q", csp)
	}
	body := w.Body.String()
	if !strings.Contains(body, "No upstream requests observed in the last 1h") {
		t.Errorf("no empty-state text")
	}
	if cells := parsePage(t, body); len(cells) != 0 {
		t.Errorf("%d cells on an empty page", len(cells))
	}
}

func TestEscaping(t *testing.T) {
	clk := NewFakeClock(t0)
	r := NewRecorder(Options{Now: clk.Now})
	evil := `https://x.example/"><script>alert(1)</script>`
	r.Observe(evil, "mod", "ttfb", "userspace", time.Millisecond)
	r.ObserveDecision(evil, "chosen", `<b>"reason"</b>`)
	code, body := get(t, r.Handler(), "/")
	if code != 200 || strings.Contains(body, "<script>") || strings.Contains(body, "<b>") {
		t.Fatalf("unescaped: %d", code)
	}
	cells := parsePage(t, body)
	if len(cells) != 2 || cells[0].Upstream != evil || cells[1].Upstream != evil {
		t.Fatalf("cells %+v", cells)
	}
}

func TestConcurrency(t *testing.T) {
	clk := NewFakeClock(t0)
	r := NewRecorder(Options{Interval: time.Second, Window: 10 * time.Second, Now: clk.Now, MaxUpstreams: 4})
	const workers, per = 4, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				up := fmt.Sprintf("https://u%d.example", (w+i)%6) // more than the cap
				r.Observe(up, "zip", phases[i%numPhases], sources[i%2], time.Duration(i)*time.Millisecond)
				r.ObserveDecision(up, decisions[i%numDecision], "r"+strconv.Itoa(i%12))
			}
		}()
	}
	var aux sync.WaitGroup
	aux.Add(2)
	go func() { // the clock runs, rotating slots under the writers
		defer aux.Done()
		for {
			select {
			case <-stop:
				return
			default:
				clk.Advance(100 * time.Millisecond)
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	go func() {
		defer aux.Done()
		for {
			select {
			case <-stop:
				return
			default:
				w := httptest.NewRecorder()
				r.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/?window=5m", nil))
				if w.Code != 400 { // 5m exceeds the 10s kept
					t.Errorf("status %d", w.Code)
				}
				w = httptest.NewRecorder()
				r.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
				if w.Code != 200 {
					t.Errorf("status %d", w.Code)
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	aux.Wait()
	if n := len(r.Upstreams()); n > 4 {
		t.Fatalf("%d upstreams, cap 4", n)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	r := NewRecorder(Options{})
	r.Observe("https://m.example/go", "zip", "ttfb", "userspace", time.Millisecond)
	r.ObserveDecision("https://m.example/go", "chosen", "healthy")
	if n := testing.AllocsPerRun(1000, func() {
		r.Observe("https://m.example/go", "zip", "ttfb", "userspace", 12*time.Millisecond)
	}); n != 0 {
		t.Errorf("Observe: %v allocations", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		r.ObserveDecision("https://m.example/go", "chosen", "healthy")
	}); n != 0 {
		t.Errorf("ObserveDecision: %v allocations", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	r := NewRecorder(Options{})
	const up = "https://mirror.example.com/go"
	r.Observe(up, "zip", "ttfb", "userspace", time.Millisecond)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.Observe(up, "zip", "ttfb", "userspace", time.Duration(i&0xffff)*time.Microsecond)
	}
}

func BenchmarkObserveParallel(b *testing.B) {
	r := NewRecorder(Options{})
	const up = "https://mirror.example.com/go"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Observe(up, "zip", phases[i%5], "userspace", time.Duration(i&0xffff)*time.Microsecond)
			i++
		}
	})
}

func BenchmarkPage(b *testing.B) {
	end := time.Date(2025, 3, 14, 10, 42, 10, 0, time.UTC)
	clk := NewFakeClock(end)
	r := NewRecorder(Options{Now: clk.Now})
	FeedSynthetic(r, clk, end)
	h := r.Handler()
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	}
}

// Decisions made on kernel evidence are outlined on the strip; the new
// decision kinds have their own colour, not "other".
func TestKernelDecisionsMarked(t *testing.T) {
	clk := NewFakeClock(t0)
	r := NewRecorder(Options{Now: clk.Now})
	r.Observe("a", "mod", "ttfb", "userspace", time.Millisecond)
	r.ObserveDecision("a", "hedged", "kernel_syn_retrans")
	r.ObserveDecision("a", "demoted", "kernel_loss")
	r.ObserveDecision("a", "abandoned", "kernel_stall")
	r.ObserveDecision("a", "chosen", "list_order")
	_, body := get(t, r.Handler(), "/")
	for _, d := range []string{"hedged", "demoted", "abandoned"} {
		if !strings.Contains(body, `data-decision="`+d+`" data-count="1" data-upstream="a" data-kernel="1"`) {
			t.Errorf("%s bar not marked as kernel evidence", d)
		}
	}
	if !strings.Contains(body, `data-decision="chosen" data-count="1" data-upstream="a">`) {
		t.Error("a userspace decision is marked as kernel evidence")
	}
	if strings.Contains(body, `data-decision="other"`) {
		t.Error("new decision kinds counted as other")
	}
}
