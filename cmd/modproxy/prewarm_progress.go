package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/modproxy/modproxy/prewarm"
)

// prewarmProgress reports modules done out of total, bytes, rate and ETA:
// as a progress bar on a terminal, as a plain line every interval
// otherwise, or not at all.
type prewarmProgress struct {
	total int
	start time.Time
	done  atomic.Int64
	bytes atomic.Int64

	bar  *progressbar.ProgressBar // terminal mode
	w    io.Writer                // plain mode
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
}

// newPrewarmProgress starts reporting to w. mode is "auto" (a bar when w is
// a terminal, plain lines otherwise), "bar", "plain" or "none".
func newPrewarmProgress(w io.Writer, mode string, total int, interval time.Duration) (*prewarmProgress, error) {
	p := &prewarmProgress{total: total, start: time.Now(), stop: make(chan struct{})}
	if mode == "auto" {
		mode = "plain"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	switch mode {
	case "none":
	case "bar":
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("prewarm"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("modules"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionShowDescriptionAtLineEnd(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetWidth(30),
			progressbar.OptionClearOnFinish(),
		)
	case "plain":
		if interval <= 0 {
			interval = 5 * time.Second
		}
		p.w = w
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					p.mu.Lock()
					fmt.Fprintln(p.w, "prewarm: "+p.line())
					p.mu.Unlock()
				case <-p.stop:
					return
				}
			}
		}()
	default:
		return nil, usagef("invalid --progress %q: want auto, bar, plain or none", mode)
	}
	return p, nil
}

// line is the progress in words: done/total, bytes, rate, ETA.
func (p *prewarmProgress) line() string {
	done, b := p.done.Load(), p.bytes.Load()
	el := time.Since(p.start)
	rate := float64(b) / max(el.Seconds(), 1e-3)
	s := fmt.Sprintf("%d/%d modules, %s, %s/s", done, p.total, formatBytes(b), formatBytes(int64(rate)))
	if done > 0 && int(done) < p.total {
		eta := time.Duration(float64(el) / float64(done) * float64(int64(p.total)-done))
		s += ", ETA " + eta.Round(time.Second).String()
	}
	return s
}

// update takes the progress of the run (prewarm.Options.Progress):
// the bar advances when a module version is done.
func (p *prewarmProgress) update(pr prewarm.Progress) {
	p.bytes.Store(pr.Bytes)
	if prev := p.done.Swap(int64(pr.Done)); p.bar != nil && int64(pr.Done) > prev {
		p.mu.Lock()
		rate := float64(pr.Bytes) / max(time.Since(p.start).Seconds(), 1e-3)
		p.bar.Describe(fmt.Sprintf("%s, %s/s", formatBytes(pr.Bytes), formatBytes(int64(rate))))
		p.bar.Set(pr.Done)
		p.mu.Unlock()
	}
}

// finish stops reporting.
func (p *prewarmProgress) finish() {
	if p.bar != nil {
		p.mu.Lock()
		p.bar.Finish()
		p.mu.Unlock()
	}
	if p.w != nil {
		close(p.stop)
		p.wg.Wait()
	}
}

// formatBytes renders n in B, kB, MB or GB (powers of 1000).
func formatBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"kB", "MB", "GB"} {
		f /= unit
		if f < unit {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	return fmt.Sprintf("%.1f TB", f/unit)
}
