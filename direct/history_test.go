package direct

import (
	"fmt"
	"github.com/modproxy/modproxy/internal/testgit"
	"strings"
	"testing"
	"time"
)

// history writes a git fast-import stream of n commits on main, from
// mark start on, each changing one of 50 files, the last tagged tag.
func history(module string, start, n int, tag string) string {
	var b strings.Builder
	when := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for i := start; i < start+n; i++ {
		fmt.Fprintf(&b, "commit refs/heads/main\nmark :%d\ncommitter t <t@example.com> %d +0000\n", i+1, when+int64(i)*60)
		msg := fmt.Sprintf("commit %d", i)
		fmt.Fprintf(&b, "data %d\n%s\n", len(msg), msg)
		switch {
		case i == start && i > 0:
			b.WriteString("from refs/heads/main^0\n") // marks do not outlive one import
		case i > 0:
			fmt.Fprintf(&b, "from :%d\n", i)
		}
		if i == 0 {
			gomod := "module " + module + "\n\ngo 1.21\n"
			fmt.Fprintf(&b, "M 644 inline go.mod\ndata %d\n%s\n", len(gomod), gomod)
		}
		src := fmt.Sprintf("package big\n\n// Rev is the revision of this file.\nconst Rev%d = %d\n", i%50, i)
		fmt.Fprintf(&b, "M 644 inline f%02d.go\ndata %d\n%s\n", i%50, len(src), src)
	}
	fmt.Fprintf(&b, "reset refs/tags/%s\nfrom :%d\n\n", tag, start+n)
	return b.String()
}

// TestLargeHistoryFirstAndNewerTag fetches v1.0.0 of a repository with
// 1,000 commits, then v1.1.0 after 20 more, from the same mirror, and
// checks both against the go command's GOPROXY=direct; the timings of
// both steps, ours and the go command's, are logged for comparison.
func TestLargeHistoryFirstAndNewerTag(t *testing.T) {
	s := testgit.New(t)
	r := s.NewRepo("big")
	mod := host + "/big"
	r.FastImport(strings.NewReader(history(mod, 0, 1000, "v1.0.0")))
	r.Push()
	imp(s, "big", "git", s.RepoURL("https", "big"), "")
	fx := &fixture{srv: s}
	// The production refs reuse, so that a version's .info, .mod and .zip
	// share one ls-remote.
	f := newTestFetcher(t, fx, func(c *Config) { c.RefsTTL = 0 })
	env := fx.goEnv(t)

	step := func(version string) (mine, theirs time.Duration) {
		start := time.Now()
		got := ours(t, f, mod+"@"+version)
		mine = time.Since(start)
		start = time.Now()
		want := goDownloads(t, env, mod+"@"+version)[mod+"@"+version]
		theirs = time.Since(start)
		if got.Error != "" || got.Sum != want.Sum || got.GoModSum != want.GoModSum {
			t.Errorf("%s: got %s %s %s, want %s %s %s", version, got.Sum, got.GoModSum, got.Error, want.Sum, want.GoModSum, want.Error)
		}
		return mine, theirs
	}
	o1, g1 := step("v1.0.0")
	r.FastImport(strings.NewReader(history(mod, 1000, 20, "v1.1.0")))
	r.Push()
	o2, g2 := step("v1.1.0")
	t.Logf("1,000-commit repository: first fetch of v1.0.0: direct %v, go command %v; newer tag v1.1.0 from the cached repository: direct %v, go command %v",
		o1.Round(time.Millisecond), g1.Round(time.Millisecond), o2.Round(time.Millisecond), g2.Round(time.Millisecond))
}
