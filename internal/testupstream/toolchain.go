package testupstream

import (
	"fmt"
	"strings"
)

// FakeToolchain returns a golang.org/toolchain module version as the go
// command downloads it for GOTOOLCHAIN=auto (cmd/go/internal/toolchain):
// v0.0.1-<name>.<goos>-<goarch>, holding bin/go, bin/gofmt, pkg/tool/ and
// lib/. Its bin/go is a shell script that runs realGo (an absolute path to
// a real go command) with GOTOOLCHAIN=local and without the switch
// variables the parent set, so a project whose toolchain line names a Go
// release that does not exist yet (go1.99.0) builds with the local Go once
// the toolchain module was fetched and verified.
func FakeToolchain(name, goos, goarch, realGo string) Module {
	if strings.ContainsAny(realGo, "'\n") {
		panic(fmt.Sprintf("testupstream: unquotable go path %q", realGo))
	}
	script := "#!/bin/sh\n" +
		"# Fake " + name + " toolchain for tests: the local go command.\n" +
		"unset GOROOT GOTOOLCHAIN_INTERNAL_SWITCH_VERSION GOTOOLCHAIN_INTERNAL_SWITCH_COUNT\n" +
		"GOTOOLCHAIN=local exec '" + realGo + "' \"$@\"\n"
	return Module{
		Path:    "golang.org/toolchain",
		Version: "v0.0.1-" + name + "." + goos + "-" + goarch,
		Files: map[string]string{
			"bin/go":    script,
			"bin/gofmt": "#!/bin/sh\nexit 1\n",
			"pkg/tool/" + goos + "_" + goarch + "/README": "fake toolchain: no tools\n",
			"lib/README": "fake toolchain\n",
			"VERSION":    name + "\n",
		},
	}
}
