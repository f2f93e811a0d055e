// Package direct fetches Go modules straight from version control, as the
// go command does with GOPROXY=direct, and answers the GOPROXY protocol's
// requests (list, latest, info, mod, zip) from the result.
//
// The go command is the reference, and its logic is followed closely so
// that the bytes served are those the go command itself would produce:
// repository discovery (known hosting patterns, ?go-get=1 go-import tags
// in their 3- and 4-field forms, the "mod" VCS), GOINSECURE and GOVCS, the
// mapping of tags to versions (major-version suffixes, subdirectory tag
// prefixes, +incompatible), canonical pseudo-versions on the right base
// tag, go.mod synthesis for pre-module repositories, and module zips made
// with golang.org/x/mod/zip from git's archive of the revision.
//
// Only git is spoken. Each repository has one bare mirror in Config.Dir,
// cloned on first use and fetched incrementally after; concurrent
// requests share one ls-remote and one fetch. git runs hardened: no hooks,
// submodules, LFS filters or prompting credential helpers, a protocol
// allowlist, bounded concurrency and per-phase timeouts. Credentials come
// from GOAUTH methods (netrc, git credential helpers, commands) and reach
// git through its environment, never its command line; they never appear
// in errors, logs or served files. They are looked up again after five
// minutes and when a server refuses them, so rotated tokens need no
// restart.
//
// Parts of this package are adapted from the go command's sources
// (cmd/go/internal/modfetch, cmd/go/internal/modfetch/codehost,
// cmd/go/internal/vcs, cmd/go/internal/auth), Copyright The Go Authors,
// used under their BSD-style license.
package direct
