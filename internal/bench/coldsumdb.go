package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// Targets of the cold scenario with a checksum database (issue 14).
const (
	targetColdSumDBRatio = 1.0  // cold through modproxy vs direct
	targetWarmFloorRatio = 1.1  // warm through modproxy vs GOPROXY=file://
	targetColdPeakRSSMB  = 150. // server peak RSS during the cold download
	coldSumDBDepFanout   = 4    // requires per generated module
	warmRounds           = 3    // warm and file:// runs, interleaved; the fastest counts
)

func init() {
	register(scenario{
		Name: "cold-sumdb", Order: 45, Timeout: 10 * time.Minute,
		Desc: "cold go mod download (go.mod + go.sum) with a checksum database behind the upstream: through a fresh modproxy vs direct, per latency; warm vs file://",
		Run:  runColdSumDB,
	})
}

// graphModules returns n one-file modules <prefix>/mNNN v1.0.0 forming a
// dependency graph: module i requires modules 2i+1 … 2i+fanout (those that
// exist), so a go.mod names modules the go command asks for later, as in
// real graphs, where a dependency's go.mod lists its own dependencies, and
// those overlap.
func graphModules(prefix string, n, fanout int) []testupstream.Module {
	mods := smallModules(prefix, n)
	for i := range mods {
		var b strings.Builder
		fmt.Fprintf(&b, "module %s\n\ngo 1.21\n", mods[i].Path)
		if first := 2*i + 1; first < n {
			b.WriteString("\nrequire (\n")
			for j := first; j < min(n, first+fanout); j++ {
				fmt.Fprintf(&b, "\t%s %s\n", mods[j].Path, mods[j].Version)
			}
			b.WriteString(")\n")
		}
		mods[i].Files["go.mod"] = b.String()
	}
	return mods
}

// goSum returns the complete go.sum of a project requiring mods, with the
// hashes of the files up serves.
func goSum(up *testupstream.Server, mods []testupstream.Module) (string, error) {
	var b strings.Builder
	for _, m := range mods {
		zh, err := testsumdb.HashZip(up.Zip(m.Path, m.Version))
		if err != nil {
			return "", fmt.Errorf("hash zip of %s@%s: %w", m.Path, m.Version, err)
		}
		mh, err := testsumdb.HashMod(up.GoMod(m.Path, m.Version))
		if err != nil {
			return "", fmt.Errorf("hash go.mod of %s@%s: %w", m.Path, m.Version, err)
		}
		fmt.Fprintf(&b, "%s %s %s\n%s %s/go.mod %s\n", m.Path, m.Version, zh, m.Path, m.Version, mh)
	}
	return b.String(), nil
}

// goDownload is one "go mod download" of the project (go.mod + go.sum) with
// a fresh module cache under dir.
type goDownload struct {
	took     time.Duration
	modcache string
}

func runGoDownload(ctx context.Context, env *Env, mods []testupstream.Module, sum, goproxy, gosumdb string) (goDownload, error) {
	dir, err := env.TempDir("cold-sumdb")
	if err != nil {
		return goDownload{}, err
	}
	proj, modcache := filepath.Join(dir, "project"), filepath.Join(dir, "modcache")
	if err := os.Mkdir(proj, 0o755); err != nil {
		return goDownload{}, fmt.Errorf("project dir: %w", err)
	}
	if err := writeProject(proj, mods); err != nil {
		return goDownload{}, err
	}
	if err := os.WriteFile(filepath.Join(proj, "go.sum"), []byte(sum), 0o644); err != nil {
		return goDownload{}, fmt.Errorf("write go.sum: %w", err)
	}
	cmd := exec.CommandContext(ctx, env.GoBin, "mod", "download")
	cmd.Dir = proj
	cmd.Env = append(os.Environ(),
		"GOPROXY="+goproxy,
		"GOMODCACHE="+modcache,
		"GOFLAGS=-mod=mod -modcacherw",
		"GOSUMDB="+gosumdb, "GONOSUMDB=", "GONOSUMCHECK=", "GOPRIVATE=", "GONOPROXY=", "GOINSECURE=",
		"GOTOOLCHAIN=local", "GOENV=off", "GOWORK=off",
	)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return goDownload{}, fmt.Errorf("go mod download via %s: %w\n%s", goproxy, err, out)
	}
	for _, m := range mods {
		z := filepath.Join(modcache, "cache", "download", m.Path, "@v", m.Version+".zip")
		if _, err := os.Stat(z); err != nil {
			return goDownload{}, fmt.Errorf("after go mod download via %s: %w", goproxy, err)
		}
	}
	return goDownload{took: took, modcache: modcache}, nil
}

func runColdSumDB(ctx context.Context, env *Env) ([]Result, error) {
	lats, err := parseLatencies(env.Opts.sumdbLatencies)
	if err != nil {
		return nil, err
	}
	n := env.Opts.e2eMods
	mods := graphModules("example.com/coldsum", n, coldSumDBDepFanout)
	up, err := env.Upstream(mods...)
	if err != nil {
		return nil, err
	}
	db, err := testsumdb.Start("sum.bench.test")
	if err != nil {
		return nil, fmt.Errorf("start test checksum database: %w", err)
	}
	defer db.Close()
	// Every record is in the log before the run, as in the real database:
	// lookups then share one tree and its tiles.
	for _, m := range mods {
		mh, err := testsumdb.HashMod(up.GoMod(m.Path, m.Version))
		if err != nil {
			return nil, err
		}
		zh, err := testsumdb.HashZip(up.Zip(m.Path, m.Version))
		if err != nil {
			return nil, err
		}
		if err := db.Publish(m.Path, m.Version, mh, zh); err != nil {
			return nil, err
		}
	}
	up.PassThroughSumDB(db.Name(), db.URL())
	sum, err := goSum(up, mods)
	if err != nil {
		return nil, err
	}
	// GOSUMDB is the key alone on both sides: the go command and modproxy
	// both reach the database through the upstream's /sumdb/ passthrough,
	// so it pays the same added latency as the module files.
	gosumdb := db.VerifierKey()

	var res []Result
	var floorDir string
	for _, lat := range lats {
		up.SetLatency(lat)
		up.ResetCounts()
		direct, err := runGoDownload(ctx, env, mods, sum, up.URL(), gosumdb)
		if err != nil {
			return res, fmt.Errorf("direct at +%s: %w", lat, err)
		}
		directRT := float64(up.Count("/")) / float64(n)
		directSum := up.Count("/sumdb/")
		floorDir = filepath.Join(direct.modcache, "cache", "download")
		up.ResetCounts()
		fmt.Fprintf(os.Stderr, "   +%s direct:           %s (%.2f upstream requests per module, %d to the checksum database)\n", lat, direct.took.Round(time.Millisecond), directRT, directSum)

		srv, err := env.StartServer(ctx, up.URL(), "--sumdb", gosumdb, "--nosumdb=")
		if err != nil {
			return res, err
		}
		rss := sampleRSS(srv.Pid, 20*time.Millisecond)
		via, err := runGoDownload(ctx, env, mods, sum, srv.URL, gosumdb)
		peak := rss.stop()
		if err != nil {
			return res, fmt.Errorf("through modproxy at +%s: %w", lat, err)
		}
		viaRT := float64(up.Count("/")) / float64(n)
		viaSum := up.Count("/sumdb/")
		fmt.Fprintf(os.Stderr, "   +%s through modproxy: %s (%.2f upstream requests per module, %d to the checksum database)\n", lat, via.took.Round(time.Millisecond), viaRT, viaSum)
		note := fmt.Sprintf("%d modules, go.mod+go.sum, upstream and checksum DB +%s per request", n, lat)
		res = append(res,
			Result{Metric: fmt.Sprintf("+%s: go mod download, direct", lat), Value: direct.took.Seconds(), Unit: "s", Note: note},
			Result{Metric: fmt.Sprintf("+%s: go mod download, through fresh modproxy", lat), Value: via.took.Seconds(), Unit: "s"},
			Result{Metric: fmt.Sprintf("+%s: cold through modproxy / direct", lat), Value: via.took.Seconds() / direct.took.Seconds(), Unit: "x", Target: atMost(targetColdSumDBRatio)},
			Result{Metric: fmt.Sprintf("+%s: upstream round trips per module, direct", lat), Value: directRT, Unit: "req", Note: fmt.Sprintf("%d to the checksum database", directSum)},
			Result{Metric: fmt.Sprintf("+%s: upstream round trips per module, through modproxy", lat), Value: viaRT, Unit: "req", Note: fmt.Sprintf("%d to the checksum database (lookups, tiles, latest)", viaSum)},
			Result{Metric: fmt.Sprintf("+%s: server peak RSS during the cold download", lat), Value: float64(peak.HWM) / 1e6, Unit: "MB", Target: atMost(targetColdPeakRSSMB), Note: "VmHWM"},
		)

		variants := []struct {
			on    bool
			flag  string
			label string
		}{
			{env.Opts.sumdbNoPrefetch, "--prefetch=false", "--prefetch=false"},
			{env.Opts.sumdbNoPrefetchInfo, "--prefetch-info=false", "--prefetch-info=false"},
		}
		for _, v := range variants {
			if !v.on {
				continue
			}
			up.ResetCounts()
			vs, err := env.StartServer(ctx, up.URL(), "--sumdb", gosumdb, "--nosumdb=", v.flag)
			if err != nil {
				return res, err
			}
			d, err := runGoDownload(ctx, env, mods, sum, vs.URL, gosumdb)
			vs.stop()
			if err != nil {
				return res, fmt.Errorf("through modproxy %s at +%s: %w", v.label, lat, err)
			}
			vRT := float64(up.Count("/")) / float64(n)
			fmt.Fprintf(os.Stderr, "   +%s through modproxy %s: %s (%.2f upstream requests per module)\n", lat, v.label, d.took.Round(time.Millisecond), vRT)
			res = append(res, Result{Metric: fmt.Sprintf("+%s: cold through modproxy %s / direct", lat, v.label), Value: d.took.Seconds() / direct.took.Seconds(), Unit: "x", Target: atMost(targetColdSumDBRatio),
				Note: fmt.Sprintf("%.2fs, %.2f upstream requests per module", d.took.Seconds(), vRT)})
		}

		// Warm: the same server again, with a fresh module cache, against
		// a GOPROXY=file:// floor of the same files (the direct run's
		// download cache). With a complete go.sum neither side asks the
		// checksum database. Each is run warmRounds times, interleaved,
		// and the fastest counts: a warm run is short, so one run is
		// mostly the noise of a shared machine.
		var warm, floor time.Duration
		for range warmRounds {
			w, err := runGoDownload(ctx, env, mods, sum, srv.URL, gosumdb)
			if err != nil {
				return res, fmt.Errorf("warm through modproxy at +%s: %w", lat, err)
			}
			fl, err := runGoDownload(ctx, env, mods, sum, "file://"+floorDir, gosumdb)
			if err != nil {
				return res, fmt.Errorf("file:// floor: %w", err)
			}
			if warm == 0 || w.took < warm {
				warm = w.took
			}
			if floor == 0 || fl.took < floor {
				floor = fl.took
			}
		}
		fmt.Fprintf(os.Stderr, "   warm through modproxy: %s, file:// floor: %s (best of %d)\n", warm.Round(time.Millisecond), floor.Round(time.Millisecond), warmRounds)
		res = append(res,
			Result{Metric: fmt.Sprintf("+%s: warm through modproxy / file:// floor", lat), Value: warm.Seconds() / floor.Seconds(), Unit: "x", Target: atMost(targetWarmFloorRatio),
				Note: fmt.Sprintf("best of %d: warm %.2fs, file:// %.2fs", warmRounds, warm.Seconds(), floor.Seconds())},
		)
		srv.stop()
	}
	up.SetLatency(0)
	return res, nil
}

// parseLatencies parses a comma-separated list of durations.
func parseLatencies(list string) ([]time.Duration, error) {
	var out []time.Duration
	for f := range strings.SplitSeq(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("--sumdb-latencies: %q is not a duration", f)
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--sumdb-latencies: no latency given")
	}
	return out, nil
}
