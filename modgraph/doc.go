// Package modgraph computes which module artifacts the go command needs to
// build and verify a project, so that a module cache can be filled ahead of
// time ("prewarmed") and later serve the build with every upstream gone.
//
// [Resolve] takes targets — a go.mod, go.sum or go.work file, a directory
// holding one, or module@version — and returns a [Plan]: the module versions
// whose .info and .mod files are needed, and those whose zip is needed too.
//
// # One set, with or without go.sum
//
// The set is always computed by walking the module graph, so a project
// with a go.sum and the same project without one need the same artifacts.
// A go.sum does not add needs: it lists only what some go command verified
// (a module that appears there as "/go.mod" alone may still be in the build
// list, and 'go mod download all' fetches its zip), and it may hold lines
// left over from an earlier graph. Its hashes are carried in the plan, so
// that the fetcher checks each artifact on arrival; lines naming versions
// outside every graph are counted in [Plan.Notes]. A go.sum target stands for
// the go.mod beside it (go.work.sum for the go.work); only a go.sum with
// neither beside it is taken line by line.
//
// # Graph walk
//
// Resolve reproduces the module graph that the go command builds in
// cmd/go/internal/modload (readModGraph), fetching go.mod files through a
// [Source], a bounded number at a time:
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
//     are read at their selected version, as in workspace mode. Each used
//     module's own graph (module mode) is walked too: 'go mod tidy' ignores
//     go.work, and so does any command run with GOWORK=off.
//   - A main module at go 1.17.x also gets its unpruned (go 1.16) graph
//     walked: 'go mod tidy' keeps go.sum complete for the previous Go
//     version (its default -compat), and for 1.17 that version reads the
//     whole graph.
//
// The plan then holds the go.mod of every module version read (.info and .mod)
// and the .info, .mod and zip of every module of the build list (the
// selected versions, or their replacements). This is what the go command
// reads with a fresh module cache for:
//
//   - 'go mod download all' and 'go mod download' (which fetch .info, .mod
//     and .zip of every module of the build list, or of the main module's
//     requirements, and read the graph to get there);
//   - 'go list -m all' and 'go list -m -json all' (the .info of every
//     module for its time, the .mod for its go version);
//   - 'go mod verify' (the build list's go.mod files and zips);
//   - 'go build', 'go vet', 'go test' and 'go list -deps -test' of the main
//     modules' packages (the zips of the modules providing imported
//     packages, and of every module whose path is a prefix of an imported
//     package, which is checked for ambiguous imports);
//   - 'go mod tidy' (the packages of "all" and the tests of each, tests of
//     dependencies included, and before go 1.17 transitively: their
//     imports may come from modules that provide no package to the build).
//
// A plain 'go build' of a pruned module needs less: the build list's zips
// beyond the providers of imported packages are fetched only by the
// commands that list or download "all".
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
