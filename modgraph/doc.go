// Package modgraph computes which module artifacts the go command needs to
// build and verify a project, so that a module cache can be filled ahead of
// time ("prewarmed") and later serve the build with every upstream gone.
//
// [Resolve] takes targets — a go.mod, go.sum or go.work file, a directory
// holding one, or module@version — and returns a [Plan]: the module versions
// whose .info and .mod files are needed, and those whose zip is needed too.
//
// # Exact resolution from go.sum
//
// A go.sum lists exactly what the go command verified: every "h1:" line is a
// zip, every "/go.mod h1:" line a go.mod file, and the hashes are carried in
// the plan so that the fetcher can check each artifact on arrival. A go.mod
// with a go.sum beside it is resolved from the go.sum, plus the go.mod's own
// requirements (so that a stale go.sum cannot hide a direct dependency). A
// workspace with any go.sum files (go.work.sum, or a go.sum beside a used
// module) is resolved from their union plus every used module's
// requirements. No network access is needed.
//
// # Graph walk without go.sum
//
// Without a go.sum, Resolve reproduces the module graph that the go command
// builds in cmd/go/internal/modload (readModGraph), fetching go.mod files
// through a [Source], a bounded number at a time:
//
//   - The main module's requirements are the roots; requirements on versions
//     excluded by the main module(s) are dropped everywhere; replace directives
//     of the main module(s) (go.work's first) redirect a module version to
//     another module version, whose go.mod is fetched instead, or to a local
//     directory, whose go.mod is read from disk; the replaced module itself is
//     not fetched.
//   - Graph pruning (go 1.17 and later): a module whose go.mod says go 1.17 or
//     later contributes its own requirements to minimal version selection, but
//     those requirements' go.mod files are not read unless they are needed
//     for another reason. Below a module without pruning (go 1.16 or earlier,
//     or no go line), the whole transitive graph is read. A main module
//     before go 1.17 reads the whole graph.
//   - Roots whose selected version is higher than the required one are
//     raised and the graph is read again, as the go command does when it
//     finds the main module's requirements inconsistent (expandGraph).
//   - In a workspace every main module's requirements are read, and
//     dependencies selected at a higher version than a main module requires
//     are read at their selected version, as in workspace mode.
//
// The plan then holds the go.mod of every module version read (.info and .mod)
// and the zip of every module of the build list (the selected versions, or
// their replacements). This is what 'go mod download all' fetches, and a
// superset of what 'go build ./...' fetches.
//
// A module@version target (or module@latest, resolved through
// Source.Latest) is resolved as 'go install module@version' would: the module
// is the root of a pruned graph under a synthetic main module, without its own
// replace and exclude directives (which go install rejects). Because go
// install also promotes every module that provides an imported package to a
// root, and packages are not inspected here, all of the module's requirements
// are taken as roots too: a superset of what go install reads. The module
// must be named by its module path, not by a package path inside it.
//
// A dependency whose go line is newer than [Options.GoVersion] is reported in
// [Plan.Notes]; the go command would need a newer toolchain for it.
//
// # Toolchains
//
// A go or toolchain line newer than [Options.GoVersion] in the go.mod or
// go.work being resolved makes GOTOOLCHAIN=auto download another toolchain;
// the plan then includes the golang.org/toolchain zip
// (v0.0.1-go1.X.Y.GOOS-GOARCH) for every platform in [Options.Platforms],
// named the way cmd/go/internal/toolchain names it.
package modgraph
