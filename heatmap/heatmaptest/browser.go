// Package heatmaptest drives the /debug/heatmap page in headless Chromium, for
// tests of the heatmap package and end-to-end tests of the whole proxy.
//
//	ctx := heatmaptest.Browser(t)                    // skips without Chromium
//	page := heatmaptest.Load(t, ctx, srv.URL+"/debug/heatmap", "e2e")
//	heatmaptest.RequirePhases(t, page, "", "dns", "connect", "ttfb")
//
// Chromium is found at $MODPROXY_CHROMIUM (only there when set), /usr/bin/chromium, or as chromium,
// chromium-browser, google-chrome on $PATH. When none is found the test is
// skipped, unless MODPROXY_REQUIRE_BROWSER=1, which makes it fail.
// Screenshots go to $MODPROXY_ARTIFACTS when set, else to t.TempDir(); the
// path is logged.
package heatmaptest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// ChromiumPath returns the browser to use, or "" when there is none.
func ChromiumPath() string {
	if p := os.Getenv("MODPROXY_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// ArtifactDir returns the directory for test artifacts: $MODPROXY_ARTIFACTS
// (created if needed) or a per-test temporary directory.
func ArtifactDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("MODPROXY_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("artifact directory: %v", err)
		}
		return d
	}
	return t.TempDir()
}

// Browser starts headless Chromium once for the test and returns a chromedp
// context for it; the browser stops when the test ends. Start it once per
// test and load several pages with it.
func Browser(t testing.TB) context.Context {
	t.Helper()
	path := ChromiumPath()
	if path == "" {
		if os.Getenv("MODPROXY_REQUIRE_BROWSER") == "1" {
			t.Fatal("no Chromium found (set MODPROXY_CHROMIUM or install chromium) and MODPROXY_REQUIRE_BROWSER=1")
		}
		t.Skip("skipping browser test: no Chromium found at $MODPROXY_CHROMIUM, /usr/bin/chromium or on $PATH (set MODPROXY_REQUIRE_BROWSER=1 to fail instead)")
	}
	userData, err := os.MkdirTemp("", "modproxy-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(userData),
		chromedp.WindowSize(1320, 900),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		// Chromium's children can write to the profile briefly after exit.
		for range 50 {
			if os.RemoveAll(userData) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	// The first Run starts the browser; it must not carry a timeout (that
	// would stop the browser), so guard it with a watchdog instead.
	start := time.AfterFunc(60*time.Second, cancel)
	err = chromedp.Do(ctx)
	if !start.Stop() {
		t.Fatalf("starting %s: timed out after 60s: %v", path, err)
	}
	if err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// Cell is one rendered rect[data-count]: a heatmap cell (Phase, Source set)
// or a decision bar (Decision set).
type Cell struct {
	Upstream string `json:"upstream"`
	Phase    string `json:"phase"`
	Source   string `json:"source"`
	Decision string `json:"decision"`
	Count    int    `json:"count"`
}

// Page is what the browser rendered.
type Page struct {
	URL        string
	Title      string
	Screenshot string // path of the full-page PNG
	EmptyText  string // the empty-state message, "" when the page has data
	Cells      []Cell
}

const cellsJS = `Array.from(document.querySelectorAll('rect[data-count]')).map(r => ({
	upstream: r.dataset.upstream || "", phase: r.dataset.phase || "", source: r.dataset.source || "",
	decision: r.dataset.decision || "", count: Number(r.dataset.count)}))`

// Load opens url in the browser, saves a full-page screenshot named
// name+".png" in ArtifactDir(t), and returns the cells found in the DOM.
func Load(t testing.TB, ctx context.Context, url, name string) *Page {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p := &Page{URL: url}
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	var err error
	if p.Title, err = chromedp.Run(ctx, chromedp.Title()); err != nil {
		t.Fatalf("title of %s: %v", url, err)
	}
	if p.Cells, err = chromedp.Run(ctx, chromedp.Evaluate[[]Cell](cellsJS)); err != nil {
		t.Fatalf("reading cells of %s: %v", url, err)
	}
	if p.EmptyText, err = chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("empty") || {}).textContent || ""`)); err != nil {
		t.Fatalf("reading empty state of %s: %v", url, err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot of %s: %v", url, err)
	}
	p.Screenshot = filepath.Join(ArtifactDir(t), name+".png")
	if err := os.WriteFile(p.Screenshot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of %s: %s (%d bytes, %d cells)", url, p.Screenshot, len(png), len(p.Cells))
	return p
}

// Counts sums the non-zero heatmap cells by "phase/source", for cells of
// upstream (all upstreams when upstream is "").
func (p *Page) Counts(upstream string) map[string]int {
	m := map[string]int{}
	for _, c := range p.Cells {
		if c.Phase == "" || c.Count <= 0 || upstream != "" && c.Upstream != upstream {
			continue
		}
		m[c.Phase+"/"+c.Source] += c.Count
	}
	return m
}

// CheckPhases returns an error naming every phase without a rendered
// rect[data-count] cell with a non-zero count (for upstream, or any upstream
// when upstream is ""). A phase may be "phase/source" to require a source.
func (p *Page) CheckPhases(upstream string, phases ...string) error {
	counts := p.Counts(upstream)
	var missing []string
	for _, want := range phases {
		found := false
		for k, n := range counts {
			if n > 0 && (k == want || strings.HasPrefix(k, want+"/")) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		have := make([]string, 0, len(counts))
		for k, n := range counts {
			have = append(have, fmt.Sprintf("%s=%d", k, n))
		}
		sort.Strings(have)
		return fmt.Errorf("heatmap %s: no non-zero cells for %s (rendered: %s; screenshot %s)",
			p.URL, strings.Join(missing, ", "), strings.Join(have, " "), p.Screenshot)
	}
	return nil
}

// RequirePhases fails the test when CheckPhases reports a missing phase.
func RequirePhases(t testing.TB, p *Page, upstream string, phases ...string) {
	t.Helper()
	if err := p.CheckPhases(upstream, phases...); err != nil {
		t.Fatal(err)
	}
}
