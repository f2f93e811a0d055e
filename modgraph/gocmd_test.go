package modgraph

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// goTool returns the go command of the toolchain running the tests.
func goTool(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the go command")
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		p, err := exec.LookPath("go")
		if err != nil {
			t.Skip("go command not found")
		}
		gobin = p
	}
	return gobin
}

func runGo(t *testing.T, gobin, dir string, env []string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, args...)
	cmd.Dir, cmd.Env = dir, env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// TestAgainstGoCommand compares the graph walk with what the real go command
// downloads for the fixture main module without a go.sum, then checks that
// the go.sum the go command wrote resolves to the same module set.
func TestAgainstGoCommand(t *testing.T) {
	gobin := goTool(t)
	proxyDir := t.TempDir()
	writeProxy(t, fixture, proxyDir)
	env, gomodcache := testEnv(t, proxyDir)

	mainDir := t.TempDir()
	writeMain(t, mainDir)
	runGo(t, gobin, mainDir, env, "mod", "download", "-json", "all")
	buildList := decodeList(t, runGo(t, gobin, mainDir, env, "list", "-m", "-json", "all"))
	if got, _ := os.ReadFile(filepath.Join(mainDir, "go.mod")); string(got) != fixtureMain {
		t.Fatalf("the go command rewrote the fixture go.mod (fixture inconsistent):\n%s", got)
	}
	goMods, goZips := artifactSets(t, gomodcache)

	// The build list of 'go list -m all', after replacement, is the zip set.
	wantZips := map[string]bool{}
	for _, m := range buildList {
		if m.Main {
			continue
		}
		if m.Replace != nil {
			m = *m.Replace
		}
		if m.Version != "" {
			wantZips[m.Path+"@"+m.Version] = true
		}
	}
	if a, b := diff(wantZips, goZips); len(a)+len(b) > 0 {
		t.Fatalf("go list -m all and go mod download all disagree: list only %v, download only %v", a, b)
	}

	// Graph walk, from a copy of the main module without go.sum.
	walkDir := t.TempDir()
	writeMain(t, walkDir)
	ctx := context.Background()
	src := &fileSource{dir: proxyDir}
	walkPlan, err := Resolve(ctx, []string{walkDir}, Options{Source: src, GoVersion: "1.26.8"})
	if err != nil {
		t.Fatal(err)
	}
	walkMods, walkZips := needSets(walkPlan)
	if a, b := diff(walkZips, goZips); len(a)+len(b) > 0 {
		t.Errorf("zips: walk only %v, go command only %v", a, b)
	}
	// Every go.mod the go command downloaded must be planned (a zip need
	// brings the .mod too); ideally no more than that.
	walkAll := map[string]bool{}
	for k := range walkMods {
		walkAll[k] = true
	}
	for k := range walkZips {
		walkAll[k] = true
	}
	if a, b := diff(walkAll, goMods); len(b) > 0 {
		t.Errorf("go.mod files the go command read but the walk does not plan: %v", b)
	} else if len(a) > 0 {
		t.Logf("go.mod files the walk plans beyond the go command's: %v", a)
	}
	t.Logf("build list zips (%d): %v", len(walkZips), keys(walkZips))
	t.Logf("go.mod-only (%d): %v", len(walkMods), keys(walkMods))
	for _, n := range walkPlan.Notes {
		t.Logf("note: %s", n)
	}
	// Only the go.mod files read through the Source were fetched, and each once.
	for k, n := range src.counts() {
		if n != 1 {
			t.Errorf("go.mod of %s fetched %d times", k, n)
		}
	}

	// The go.sum path, with the go.sum the go command wrote: same module set,
	// same zip flags, and every hash carried.
	sumData, err := os.ReadFile(filepath.Join(mainDir, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(walkDir, "go.sum"), sumData, 0o666))
	sumPlan, err := Resolve(ctx, []string{filepath.Join(walkDir, "go.mod")}, Options{Source: src, GoVersion: "1.26.8"})
	if err != nil {
		t.Fatal(err)
	}
	sumMods, sumZips := needSets(sumPlan)
	if a, b := diff(sumZips, walkZips); len(a)+len(b) > 0 {
		t.Errorf("zips: go.sum path only %v, walk only %v", a, b)
	}
	if a, b := diff(sumMods, walkMods); len(a)+len(b) > 0 {
		t.Errorf("go.mod only: go.sum path only %v, walk only %v", a, b)
	}
	// Every go.sum line inside the graph is carried as a hash.
	for _, line := range strings.Split(strings.TrimSpace(string(sumData)), "\n") {
		f := strings.Fields(line)
		v, modOnly := strings.CutSuffix(f[1], "/go.mod")
		i := slices.IndexFunc(sumPlan.Needs, func(n Need) bool { return n.Path == f[0] && n.Version == v })
		if i < 0 {
			t.Errorf("go.sum line %q: not in the plan", line)
			continue
		}
		if n := sumPlan.Needs[i]; modOnly && n.ModHash != f[2] || !modOnly && n.ZipHash != f[2] {
			t.Errorf("go.sum line %q: plan carries %+v", line, n)
		}
	}
	for _, n := range sumPlan.Notes {
		t.Logf("note: %s", n)
	}
}

// TestGoInstallAgainstGoCommand compares a module@version target with the
// modules 'go install module@version' downloads.
func TestGoInstallAgainstGoCommand(t *testing.T) {
	gobin := goTool(t)
	u := universe{}
	for k, v := range fixture {
		u[k] = v
	}
	// A command whose go.mod requires a pruned and an unpruned module.
	u["example.com/cmd@v1.2.0"] = "module example.com/cmd\n\ngo 1.21\n\nrequire (\n\texample.com/a v1.0.0\n\texample.com/old v1.0.0\n\texample.com/c v1.1.0\n)\n"
	u["example.com/cmd@v1.2.0#code"] = "package main\n\nimport (\n\t_ \"example.com/a\"\n\t_ \"example.com/old\"\n)\n\nfunc main() {}\n"
	u["example.com/cmd@v1.1.0"] = "module example.com/cmd\n\ngo 1.21\n"
	proxyDir := t.TempDir()
	writeProxy(t, u, proxyDir)
	env, gomodcache := testEnv(t, proxyDir)
	env = append(env, "GOBIN="+t.TempDir())
	// -n: load and download as go install does, but neither compile nor link.
	runGo(t, gobin, t.TempDir(), env, "install", "-n", "example.com/cmd@latest")
	goMods, goZips := artifactSets(t, gomodcache)

	plan, err := Resolve(context.Background(), []string{"example.com/cmd@latest"}, Options{Source: &fileSource{dir: proxyDir}, GoVersion: "1.26.8"})
	if err != nil {
		t.Fatal(err)
	}
	mods, zips := needSets(plan)
	all := map[string]bool{}
	for k := range mods {
		all[k] = true
	}
	for k := range zips {
		all[k] = true
	}
	// go install downloads only the zips of modules providing packages
	// (the command, a and old): the plan's zips cover them.
	if _, b := diff(zips, goZips); len(b) > 0 {
		t.Errorf("zips the go command downloaded but the plan lacks: %v", b)
	}
	if _, b := diff(all, goMods); len(b) > 0 {
		t.Errorf("go.mod files the go command read but the plan lacks: %v", b)
	}
	t.Logf("go install: go.mod %v zip %v", keys(goMods), keys(goZips))
	t.Logf("plan: go.mod-only %v zip %v", keys(mods), keys(zips))
}

// TestWorkspaceAgainstGoCommand compares the workspace graph walk with what
// the go command downloads for 'go mod download all' in workspace mode.
func TestWorkspaceAgainstGoCommand(t *testing.T) {
	gobin := goTool(t)
	u := universe{}
	for k, v := range fixture {
		u[k] = v
	}
	// A published version of a workspace module, required by the other one.
	u["example.com/two@v1.0.0"] = "module example.com/two\n\ngo 1.21\n\nrequire example.com/mod/v2 v2.0.0\n"
	proxyDir := t.TempDir()
	writeProxy(t, u, proxyDir)
	env, gomodcache := testEnv(t, proxyDir)

	ws := t.TempDir()
	files := map[string]string{
		"go.work": "go 1.21\n\nuse (\n\t./one\n\t./two\n)\n\nreplace example.com/rep v1.0.0 => example.com/fork v1.0.1\n",
		"one/go.mod": "module example.com/one\n\ngo 1.21\n\nrequire (\n\texample.com/a v1.0.0\n\texample.com/old v1.0.0\n" +
			"\texample.com/rep v1.0.0\n\texample.com/two v1.0.0\n)\n",
		"one/one.go": "package one\n",
		"two/go.mod": "module example.com/two\n\ngo 1.21\n\nrequire (\n\texample.com/b v1.0.0\n\texample.com/c v1.1.0\n)\n\n" +
			"exclude example.com/x v1.1.0\n\nreplace example.com/rep => example.com/nowhere v1.0.0\n",
		"two/two.go": "package two\n",
	}
	writeFiles(t, ws, files)
	// -mod=mod is not allowed in workspace mode.
	wenv := append(slicesWithout(env, "GOWORK=off", "GOFLAGS=-mod=mod"), "GOWORK="+filepath.Join(ws, "go.work"), "GOFLAGS=-mod=readonly")
	runGo(t, gobin, ws, wenv, "mod", "download", "-json", "all")
	// Commands that ignore go.work (go mod tidy, GOWORK=off) read each
	// module's own graph: the plan covers those too. one's fails even
	// online (it requires rep v1.0.0, which only go.work replaces).
	runGo(t, gobin, filepath.Join(ws, "two"), env, "mod", "download", "-json", "all")
	cmd := exec.Command(gobin, "mod", "download", "all")
	cmd.Dir, cmd.Env = filepath.Join(ws, "one"), append(slices.Clip(env), "GOMODCACHE="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("module one's own graph downloaded, want failure:\n%s", out)
	}
	goMods, goZips := artifactSets(t, gomodcache)

	walkWs := t.TempDir()
	writeFiles(t, walkWs, files)
	plan, err := Resolve(context.Background(), []string{walkWs}, Options{Source: &fileSource{dir: proxyDir}, GoVersion: "1.26.8"})
	if err != nil {
		t.Fatal(err)
	}
	mods, zips := needSets(plan)
	if a, b := diff(zips, goZips); len(a)+len(b) > 0 {
		t.Errorf("zips: walk only %v, go command only %v", a, b)
	}
	if !slices.ContainsFunc(plan.Notes, func(n string) bool {
		return strings.Contains(n, filepath.Join("one", "go.mod")) && strings.Contains(n, "its graph cannot be read")
	}) {
		t.Errorf("no note on module one's unreadable graph: %q", plan.Notes)
	}
	all := map[string]bool{}
	for k := range mods {
		all[k] = true
	}
	for k := range zips {
		all[k] = true
	}
	if a, b := diff(all, goMods); len(b) > 0 {
		t.Errorf("go.mod files the go command read but the walk does not plan: %v", b)
	} else if len(a) > 0 {
		t.Logf("go.mod files the walk plans beyond the go command's: %v", a)
	}
	t.Logf("zips %v; go.mod only %v", keys(zips), keys(mods))

	// The go.work.sum the go command wrote resolves to the same set.
	sum, err := os.ReadFile(filepath.Join(ws, "go.work.sum"))
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(walkWs, "go.work.sum"), sum, 0o666))
	sumPlan, err := Resolve(context.Background(), []string{filepath.Join(walkWs, "go.work")}, Options{Source: &fileSource{dir: proxyDir}, GoVersion: "1.26.8"})
	if err != nil {
		t.Fatal(err)
	}
	sumMods, sumZips := needSets(sumPlan)
	if a, b := diff(sumZips, zips); len(a)+len(b) > 0 {
		t.Errorf("zips: go.work.sum path only %v, walk only %v", a, b)
	}
	if a, b := diff(sumMods, mods); len(a)+len(b) > 0 {
		t.Errorf("go.mod only: go.work.sum path only %v, walk only %v", a, b)
	}
}

func slicesWithout(env []string, drop ...string) []string {
	var out []string
	for _, kv := range env {
		if !slices.Contains(drop, kv) {
			out = append(out, kv)
		}
	}
	return out
}
