package modgraph

import (
	"fmt"
	"go/version"
	"strings"
)

// ToolchainModule is the module path under which Go toolchains are
// distributed through module proxies.
const ToolchainModule = "golang.org/toolchain"

// toolchainModuleVersionPrefix is the packaging version the go command uses:
// golang.org/toolchain@v0.0.1-<toolchain>.<goos>-<goarch>
// (see cmd/go/internal/toolchain, gotoolchainVersion).
const toolchainModuleVersionPrefix = "v0.0.1-"

// ToolchainVersion returns the golang.org/toolchain module version holding
// toolchain name (such as "go1.22.3") for the platform goos/goarch.
func ToolchainVersion(name, goos, goarch string) string {
	return toolchainModuleVersionPrefix + name + "." + goos + "-" + goarch
}

// goVersionValid reports whether v (without the "go" prefix) is a valid Go
// version such as "1.21", "1.21rc1" or "1.21.3".
func goVersionValid(v string) bool {
	return v != "" && version.IsValid("go"+v)
}

// compareGo compares two Go versions written without the "go" prefix, with
// the ordering the go command uses: 1.21 < 1.21rc1 < 1.21.0 < 1.21.1.
func compareGo(a, b string) int {
	return version.Compare("go"+a, "go"+b)
}

// isLang reports whether v is a language version ("1.21") rather than a
// release ("1.21.0") or pre-release ("1.21rc1").
func isLang(v string) bool {
	return version.Lang("go"+v) == "go"+v
}

// fromToolchain returns the Go version of a toolchain name: "go1.21.3" and
// "go1.21.3-custom" give "1.21.3", "corp-go1.21.3" gives "1.21.3".
// It returns "" for names that do not denote a Go toolchain.
func fromToolchain(name string) string {
	if strings.ContainsAny(name, `\/`) {
		return ""
	}
	var v string
	if strings.HasPrefix(name, "go") {
		v = name[2:]
	} else if _, after, ok := strings.Cut(name, "-go"); ok {
		v = after
	} else {
		return ""
	}
	if i := strings.IndexAny(v, " \t-"); i >= 0 {
		v = v[:i]
	}
	if !goVersionValid(v) {
		return ""
	}
	return v
}

// selectToolchain mirrors the go command's GOTOOLCHAIN=auto selection
// (cmd/go/internal/toolchain.Select) for a go.mod or go.work file with the
// given go and toolchain lines, run by a go command of version host. It
// returns the toolchain name to download ("go1.22.3"), or "" when the host
// toolchain suffices. file names the file for error messages.
func selectToolchain(file, host, goLine, toolchainLine string) (string, error) {
	if !goVersionValid(host) {
		return "", nil // development toolchain: no switch to reason about
	}
	minVers, chosen := host, ""
	if toolchainLine != "" && toolchainLine != "default" {
		tv := fromToolchain(toolchainLine)
		if tv == "" || (!strings.HasPrefix(toolchainLine, "go") && !strings.Contains(toolchainLine, "-go")) {
			return "", fmt.Errorf("%s: invalid toolchain %q", file, toolchainLine)
		}
		if compareGo(tv, minVers) > 0 {
			chosen, minVers = toolchainLine, tv
		}
	}
	if goLine != "" && compareGo(goLine, minVers) > 0 {
		chosen = "go" + goLine
		// Since Go 1.21 the first release of a language version is X.Y.0;
		// the go command never downloads a bare language version (go.dev/issue/62278).
		if isLang(goLine) && compareGo(goLine, "1.21") >= 0 {
			chosen += ".0"
		}
	}
	return chosen, nil
}

// toolchainNeeds returns the zips of toolchain name for every platform.
func toolchainNeeds(name string, platforms []string) []Need {
	needs := make([]Need, 0, len(platforms))
	for _, p := range platforms {
		goos, goarch, _ := strings.Cut(p, "/")
		needs = append(needs, Need{Path: ToolchainModule, Version: ToolchainVersion(name, goos, goarch), Zip: true})
	}
	return needs
}
