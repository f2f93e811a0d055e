package bundle

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// tileHeight is the tile height of Go checksum databases (the go command's
// client asks for height-8 tiles).
const tileHeight = 8

// maxTreePairs bounds the distinct tree sizes for which Finish checks every
// pair; beyond it only pairs with the largest tree are checked.
const maxTreePairs = 16

// Mirror reads from a checksum database exactly the files that a go command
// with an empty checksum-database cache reads to verify a set of module
// versions: for each version its lookup record, and the tiles that prove
// the record is in the record's signed tree and that the trees seen are
// consistent. Everything is read through Get, so a Get that goes to a
// modproxy server (or its handler in-process) makes that server store what
// it serves, and a Get that reads a store lets the caller write each file
// out (see ExportDir).
//
// The records are authenticated as the go command does it when the
// database's verifier key is known: tree heads are signed notes checked
// with the key, tiles are checked against the tree hash, and each record's
// hash must be in its tree.
//
// The go command looks records up concurrently, so the tree head it holds
// when a record arrives depends on timing. Mirror covers a fresh client
// that sees any record first (each record in its own tree), and, when the
// records carry different tree sizes, the proofs between every pair of
// them (up to maxTreePairs distinct sizes; beyond that only against the
// largest tree).
type Mirror struct {
	// Get reads a file of the database, named relative to its base URL:
	// "lookup/<escaped path>@<escaped version>" or a tile path
	// ("tile/8/0/000.p/3").
	get       func(file string) ([]byte, error)
	verifiers note.Verifiers // nil: tree heads are not authenticated

	mu      sync.Mutex
	tiles   map[tlog.Tile][]byte
	trees   map[int64]tlog.Tree
	heads   map[int64][]byte // signed tree head of each tree, as found
	records []mirrorRecord
}

type mirrorRecord struct {
	id   int64
	text []byte
	file string // "lookup/…"
	data []byte // the record as read
}

// NewMirror returns a Mirror reading through get. vkey is the database's
// verifier key ("<name>+<hash>+<key>"); when empty, tree heads are parsed
// but not authenticated.
func NewMirror(get func(file string) ([]byte, error), vkey string) (*Mirror, error) {
	m := &Mirror{get: get, tiles: map[tlog.Tile][]byte{}, trees: map[int64]tlog.Tree{}, heads: map[int64][]byte{}}
	if vkey != "" {
		v, err := note.NewVerifier(vkey)
		if err != nil {
			return nil, fmt.Errorf("checksum database verifier key %q: %w", vkey, err)
		}
		m.verifiers = note.VerifierList(v)
	}
	return m, nil
}

// Lookup reads and authenticates the record of path@version, with the
// tiles that prove it, and returns its lines ("<path> <version> h1:…" and
// "<path> <version>/go.mod h1:…").
func (m *Mirror) Lookup(path, version string) ([]string, error) {
	epath, err := module.EscapePath(path)
	if err != nil {
		return nil, fmt.Errorf("checksum database lookup: %w", err)
	}
	evers, err := module.EscapeVersion(version)
	if err != nil {
		return nil, fmt.Errorf("checksum database lookup: %w", err)
	}
	file := "lookup/" + epath + "@" + evers
	data, err := m.get(file)
	if err != nil {
		return nil, fmt.Errorf("checksum database lookup of %s@%s: %w", path, version, err)
	}
	id, text, treeMsg, err := tlog.ParseRecord(data)
	if err != nil {
		return nil, fmt.Errorf("checksum database record of %s@%s: %w", path, version, err)
	}
	tree, err := m.parseTree(treeMsg)
	if err != nil {
		return nil, fmt.Errorf("checksum database record of %s@%s: %w", path, version, err)
	}
	if id >= tree.N {
		return nil, fmt.Errorf("checksum database record of %s@%s: record %d is not in its tree of size %d", path, version, id, tree.N)
	}
	if err := m.checkRecord(tree, id, text); err != nil {
		return nil, fmt.Errorf("checksum database record of %s@%s: %w", path, version, err)
	}
	// A go command that already holds this tree head checks it again
	// (checkTrees with equal sizes) on its next record.
	if err := m.checkTree(tree, tree); err != nil {
		return nil, fmt.Errorf("checksum database record of %s@%s: %w", path, version, err)
	}
	var lines []string
	prefix := path + " " + version
	for line := range strings.SplitSeq(string(text), "\n") {
		if line == "" {
			continue
		}
		if !strings.HasPrefix(line, prefix+" ") && !strings.HasPrefix(line, prefix+"/go.mod ") {
			return nil, fmt.Errorf("checksum database record of %s@%s has an unexpected line %q", path, version, line)
		}
		lines = append(lines, line)
	}
	m.mu.Lock()
	m.trees[tree.N] = tree
	if _, ok := m.heads[tree.N]; !ok {
		m.heads[tree.N] = treeMsg
	}
	m.records = append(m.records, mirrorRecord{id: id, text: text, file: file, data: data})
	m.mu.Unlock()
	return lines, nil
}

// Finish reads the tiles that prove the trees of all records looked up so
// far consistent with each other, and each record present in the larger
// trees, as a go command holding a larger tree head checks them.
func (m *Mirror) Finish() error {
	m.mu.Lock()
	trees := make([]tlog.Tree, 0, len(m.trees))
	for _, t := range m.trees {
		trees = append(trees, t)
	}
	records := slices.Clone(m.records)
	m.mu.Unlock()
	if len(trees) < 2 {
		return nil
	}
	slices.SortFunc(trees, func(a, b tlog.Tree) int { return int(a.N - b.N) })
	newers := trees[1:]
	if len(trees) > maxTreePairs {
		newers = trees[len(trees)-1:]
	}
	for _, newer := range newers {
		for _, older := range trees {
			if older.N >= newer.N {
				break
			}
			if err := m.checkTree(older, newer); err != nil {
				return err
			}
		}
		for _, r := range records {
			if r.id < newer.N {
				if err := m.checkRecord(newer, r.id, r.text); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// parseTree returns the tree in a signed tree head, checking the signature
// when the verifier key is known.
func (m *Mirror) parseTree(msg []byte) (tlog.Tree, error) {
	var text []byte
	if m.verifiers != nil {
		n, err := note.Open(msg, m.verifiers)
		if err != nil {
			return tlog.Tree{}, fmt.Errorf("tree head: %w", err)
		}
		text = []byte(n.Text)
	} else {
		// Unauthenticated: the note text ends at the blank line before
		// the signatures.
		i := bytes.Index(msg, []byte("\n\n"))
		if i < 0 {
			return tlog.Tree{}, fmt.Errorf("tree head is not a signed note")
		}
		text = msg[:i+1]
	}
	t, err := tlog.ParseTree(text)
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("tree head: %w", err)
	}
	return t, nil
}

// checkRecord proves that record id with content text is in tree.
func (m *Mirror) checkRecord(tree tlog.Tree, id int64, text []byte) error {
	hashes, err := tlog.TileHashReader(tree, m).ReadHashes([]int64{tlog.StoredHashIndex(0, id)})
	if err != nil {
		return fmt.Errorf("proving record %d in tree of size %d: %w", id, tree.N, err)
	}
	if hashes[0] != tlog.RecordHash(text) {
		return fmt.Errorf("record %d does not match tree of size %d", id, tree.N)
	}
	return nil
}

// checkTree checks, from newer's tiles, that older is a prefix of newer.
func (m *Mirror) checkTree(older, newer tlog.Tree) error {
	h, err := tlog.TreeHash(older.N, tlog.TileHashReader(newer, m))
	if err != nil {
		return fmt.Errorf("checking tree of size %d against tree of size %d: %w", older.N, newer.N, err)
	}
	if h != older.Hash {
		return fmt.Errorf("checksum database SECURITY ERROR: tree of size %d is inconsistent with tree of size %d", older.N, newer.N)
	}
	return nil
}

// Height implements tlog.TileReader.
func (m *Mirror) Height() int { return tileHeight }

// ReadTiles implements tlog.TileReader, reading each tile once.
func (m *Mirror) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		m.mu.Lock()
		data, ok := m.tiles[t]
		m.mu.Unlock()
		if !ok {
			var err error
			if data, err = m.get(t.Path()); err != nil {
				return nil, fmt.Errorf("reading %s: %w", t.Path(), err)
			}
			if len(data) != t.W*tlog.HashSize {
				return nil, fmt.Errorf("reading %s: %d bytes, want %d", t.Path(), len(data), t.W*tlog.HashSize)
			}
		}
		out[i] = data
	}
	return out, nil
}

// SaveTiles implements tlog.TileReader: tiles proven valid are kept in
// memory so that each is read once.
func (m *Mirror) SaveTiles(tiles []tlog.Tile, data [][]byte) {
	m.mu.Lock()
	for i, t := range tiles {
		m.tiles[t] = data[i]
	}
	m.mu.Unlock()
}
