package heatmap_test

import (
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/modproxy/modproxy/heatmap"
	"github.com/modproxy/modproxy/heatmap/heatmaptest"
)

// TestBrowser renders the page in headless Chromium (started once), saves
// screenshots, and checks from the DOM that every exercised phase drew cells.
func TestBrowser(t *testing.T) {
	ctx := heatmaptest.Browser(t) // skips without Chromium

	end := time.Date(2025, 3, 14, 10, 42, 10, 0, time.UTC)
	clk := heatmap.NewFakeClock(end)
	rec := heatmap.NewRecorder(heatmap.Options{Now: clk.Now})
	heatmap.FeedSynthetic(rec, clk, end)
	srv := httptest.NewServer(rec.Handler())
	defer srv.Close()

	page := heatmaptest.Load(t, ctx, srv.URL+"/", "heatmap")
	if page.Title != "modproxy · upstream latency heatmap" {
		t.Errorf("title = %q", page.Title)
	}
	if page.EmptyText != "" {
		t.Errorf("unexpected empty state: %q", page.EmptyText)
	}
	heatmaptest.RequirePhases(t, page, heatmap.SyntheticPrimary,
		"dns/userspace", "connect/userspace", "connect/kernel", "tls/userspace",
		"ttfb/userspace", "ttfb/kernel", "transfer/userspace")
	heatmaptest.RequirePhases(t, page, heatmap.SyntheticBackup, "ttfb", "transfer")
	if err := page.CheckPhases("", "total"); err == nil {
		t.Errorf("phase total drawn without ?phase=total")
	}
	var decided int
	for _, c := range page.Cells {
		if c.Decision != "" {
			decided += c.Count
		}
	}
	if decided == 0 {
		t.Errorf("no decision bars rendered")
	}

	// A filtered view, and the empty state.
	q := url.Values{"upstream": {heatmap.SyntheticPrimary}, "phase": {"ttfb"}, "window": {"15m"}}
	filtered := heatmaptest.Load(t, ctx, srv.URL+"/?"+q.Encode(), "heatmap-ttfb-15m")
	heatmaptest.RequirePhases(t, filtered, heatmap.SyntheticPrimary, "ttfb/userspace", "ttfb/kernel")
	if err := filtered.CheckPhases("", "dns"); err == nil {
		t.Errorf("phase filter let dns through")
	}

	empty := httptest.NewServer(heatmap.NewRecorder(heatmap.Options{}).Handler())
	defer empty.Close()
	ep := heatmaptest.Load(t, ctx, empty.URL+"/", "heatmap-empty")
	if ep.EmptyText == "" || len(ep.Cells) != 0 {
		t.Errorf("empty recorder: empty text %q, %d cells", ep.EmptyText, len(ep.Cells))
	}
}
