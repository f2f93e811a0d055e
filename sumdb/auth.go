package sumdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// errBadData is wrapped by errors for checksum-database data (a tile, a
// record, a tree head) proven not to be the database's: it fails
// authentication against a signed tree head. Such data is a security
// event, never "unavailable": it must not let --sumdb-fail-open store
// anything unverified.
var errBadData = errors.New("fails authentication")

// fetchError wraps a failure to get the data that would prove a tile
// either way (a proof tile missing from the store while offline, a
// network error).
type fetchError struct{ err error }

func (e *fetchError) Error() string { return e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

// maxTileHeight bounds the tiles the proxy authenticates and serves. The
// go command and golang.org/x/mod/sumdb use height 8; larger heights would
// only make a request cost more.
const maxTileHeight = 8

// openTree checks msg's signature with the verifier key and returns the
// tree head it signs.
func (v *Verifier) openTree(msg []byte) (tlog.Tree, error) {
	n, err := note.Open(msg, v.note)
	if err != nil {
		return tlog.Tree{}, err
	}
	return tlog.ParseTree([]byte(n.Text))
}

// storedTrees returns the signed tree heads in the store that pass their
// signature check: the one the verifier's client trusts and the one the
// handler served last.
func (v *Verifier) storedTrees() []tlog.Tree {
	var trees []tlog.Tree
	for _, key := range []string{latestKey(v.name + "/latest"), v.servedLatestKey()} {
		e, err := v.store.GetEntry(key)
		if err != nil || len(e.Value) == 0 {
			continue
		}
		if t, err := v.openTree(e.Value); err == nil {
			trees = append(trees, t)
		}
	}
	return trees
}

// tileIndexes returns the stored-hash indexes tile t stands for: the
// hashes a hash tile holds, or the record hashes of a data tile's records.
func tileIndexes(t tlog.Tile) []int64 {
	level := t.L * t.H
	if t.L < 0 {
		level = 0
	}
	first := t.N << uint(t.H)
	idx := make([]int64, t.W)
	for i := range idx {
		idx[i] = tlog.StoredHashIndex(level, first+int64(i))
	}
	return idx
}

// covers reports whether tree holds every hash tile t stands for.
func covers(tree tlog.Tree, t tlog.Tile) bool {
	idx := tileIndexes(t)
	return idx[len(idx)-1] < tlog.StoredHashIndex(0, tree.N)
}

// authenticateTile proves that data is the content of tile t in the
// database's log: its hashes (or, for a data tile, its records' hashes)
// must be those of a tree whose head the database signed. The trees tried
// are extra and those in the store; when none covers t and base is set,
// base's /latest. Proof tiles come from the store, then from base ("" for
// none). Every tile read to prove t is itself authenticated and stored in
// the verified bucket. The error wraps errBadData when data is proven
// wrong; otherwise (nothing to prove it with) a *fetchError.
func (v *Verifier) authenticateTile(ctx context.Context, t tlog.Tile, data []byte, base string, extra ...tlog.Tree) error {
	if t.H < 1 || t.H > maxTileHeight || t.W < 1 || t.W > 1<<uint(t.H) {
		return fmt.Errorf("%w: tile %s: height or width out of range", errBadData, t.Path())
	}
	if t.L >= 0 && len(data) != t.W*tlog.HashSize {
		return fmt.Errorf("%w: tile %s has %d bytes, want %d", errBadData, t.Path(), len(data), t.W*tlog.HashSize)
	}
	var tree tlog.Tree
	found := false
	for _, tr := range append(extra, v.storedTrees()...) {
		if covers(tr, t) && (!found || tr.N < tree.N) {
			tree, found = tr, true
		}
	}
	if !found && base != "" {
		msg, err := v.get(ctx, base+"/latest")
		if err != nil {
			return &fetchError{fmt.Errorf("checksum database %s: fetching a tree head to authenticate tile %s: %w", v.name, t.Path(), err)}
		}
		tr, err := v.openTree(msg)
		if err != nil {
			return fmt.Errorf("%w: %s/latest is not a tree head signed by %s: %v", errBadData, v.upstreamOf(base), v.name, err)
		}
		tree, found = tr, covers(tr, t)
	}
	if !found {
		return &fetchError{fmt.Errorf("checksum database %s: no signed tree head known covers tile %s", v.name, t.Path())}
	}
	var err error
	for _, useStore := range []bool{true, false} {
		if !useStore && base == "" {
			break
		}
		r := &proofReader{v: v, ctx: ctx, cand: t, data: data, base: base, useStore: useStore}
		if err = v.checkTile(tree, t, data, r); err == nil || !errors.Is(err, errBadData) {
			return err
		}
		// A bad proof tile in the store would fail a good candidate too:
		// try again with proofs from base alone before calling data bad.
	}
	return err
}

// authenticateRecord proves that data, a lookup answer, holds a record of
// the database's log: its tree head is signed by the database, and the
// record's hash is the one that tree proves for its ID (proof tiles from
// the store, then from base). Like authenticateTile, the error wraps
// errBadData when data is proven wrong, else it is a *fetchError.
func (v *Verifier) authenticateRecord(ctx context.Context, base string, data []byte) error {
	id, text, treeMsg, err := tlog.ParseRecord(data)
	if err != nil {
		return fmt.Errorf("%w: malformed lookup record: %v", errBadData, err)
	}
	tree, err := v.openTree(treeMsg)
	if err != nil {
		return fmt.Errorf("%w: the record's tree head is not signed by %s: %v", errBadData, v.name, err)
	}
	if id < 0 || id >= tree.N {
		return fmt.Errorf("%w: record %d is not in its tree of %d records", errBadData, id, tree.N)
	}
	for _, useStore := range []bool{true, false} {
		if !useStore && base == "" {
			break
		}
		// No candidate tile: every tile comes from the store or base.
		r := &proofReader{v: v, ctx: ctx, cand: tlog.Tile{H: maxTileHeight, L: -1}, base: base, useStore: useStore}
		hashes, err := tlog.TileHashReader(tree, r).ReadHashes([]int64{tlog.StoredHashIndex(0, id)})
		var fe *fetchError
		switch {
		case errors.As(err, &fe):
			return err
		case err != nil:
			continue // a bad proof tile in the store: try base's
		case hashes[0] != tlog.RecordHash(text):
			return fmt.Errorf("%w: record %d disagrees with tree %d", errBadData, id, tree.N)
		}
		return nil
	}
	return fmt.Errorf("%w: the tiles proving record %d against tree %d do not authenticate", errBadData, id, tree.N)
}

// checkTile compares data with the hashes tree proves for tile t.
func (v *Verifier) checkTile(tree tlog.Tree, t tlog.Tile, data []byte, r tlog.TileReader) error {
	hashes, err := tlog.TileHashReader(tree, r).ReadHashes(tileIndexes(t))
	if err != nil {
		var fe *fetchError
		if errors.As(err, &fe) {
			return err
		}
		return fmt.Errorf("%w: tile %s against tree %d: %v", errBadData, t.Path(), tree.N, err)
	}
	if t.L >= 0 {
		for i, h := range hashes {
			if !bytes.Equal(h[:], data[i*tlog.HashSize:(i+1)*tlog.HashSize]) {
				return fmt.Errorf("%w: tile %s: hash %d disagrees with tree %d", errBadData, t.Path(), i, tree.N)
			}
		}
		return nil
	}
	// A data tile is the tile's records, each its text (ending in a
	// newline) and a blank line, without the record ID line.
	rest, first := data, t.N<<uint(t.H)
	for i, h := range hashes {
		j := bytes.Index(rest, []byte("\n\n"))
		if j < 0 || tlog.RecordHash(rest[:j+1]) != h {
			return fmt.Errorf("%w: data tile %s: record %d disagrees with tree %d", errBadData, t.Path(), first+int64(i), tree.N)
		}
		rest = rest[j+2:]
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: data tile %s: %d bytes after its last record", errBadData, t.Path(), len(rest))
	}
	return nil
}

// proofReader is the tlog.TileReader that authenticateTile proves a
// candidate tile with: the candidate itself, tiles from the store (when
// useStore), else tiles from base. tlog checks everything it reads
// against the tree hash before SaveTiles.
type proofReader struct {
	v        *Verifier
	ctx      context.Context
	cand     tlog.Tile
	data     []byte
	base     string
	useStore bool
}

func (r *proofReader) Height() int { return r.cand.H }

func (r *proofReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		if t == r.cand && t.L >= 0 {
			out[i] = r.data
			continue
		}
		if r.useStore {
			if data, _, ok := r.v.storedTile(t); ok {
				out[i] = data
				continue
			}
		}
		if r.base == "" {
			return nil, &fetchError{fmt.Errorf("checksum database %s: tile %s, needed to authenticate tile %s, is not in the store", r.v.name, t.Path(), r.cand.Path())}
		}
		data, err := r.v.get(r.ctx, r.base+"/"+t.Path())
		if err != nil {
			return nil, &fetchError{fmt.Errorf("checksum database %s: tile %s, needed to authenticate tile %s: %w", r.v.name, t.Path(), r.cand.Path(), err)}
		}
		out[i] = data
	}
	return out, nil
}

// SaveTiles keeps the now authenticated tiles, the candidate included.
func (r *proofReader) SaveTiles(tiles []tlog.Tile, data [][]byte) {
	for i, t := range tiles {
		r.v.storeVerified(r.v.name+"/"+t.Path(), data[i])
	}
}

// storeVerified stores authenticated data (a tile or lookup record file)
// in the verified bucket. Tiles are immutable and a record's text is
// fixed, so a different value stored there before was never the
// database's: it is replaced and reported as a security event.
func (v *Verifier) storeVerified(file string, data []byte) {
	old, err := v.store.GetKV(bucketVerified, file)
	switch {
	case err == nil && bytes.Equal(old, data):
		// Already stored: a proof reads the same tiles again, and a
		// write is a store transaction.
	case err == nil && !sameContent(file, old, data):
		v.reportBadData(fmt.Sprintf("stored %s differs from the authenticated copy; replaced it", file))
		fallthrough
	default:
		if err := v.store.PutKV(bucketVerified, file, data); err != nil {
			v.log.Warn("cannot store checksum database data", "file", file, "err", err)
			return
		}
	}
	if rest, ok := cutName(file, v.name); ok {
		v.authed.add(file, data)
		if t, err := tlog.ParseTilePath(rest); err == nil && t.L >= 0 && t.W < 1<<uint(t.H) {
			v.notePartialTile(t)
		}
	}
}

// sameContent reports whether two values of file say the same: the same
// bytes, or for a lookup record (whose tree note changes as the log grows)
// the same record.
func sameContent(file string, a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	if !strings.Contains(file, "/lookup/") {
		return false
	}
	ida, texta, _, erra := tlog.ParseRecord(a)
	idb, textb, _, errb := tlog.ParseRecord(b)
	return erra == nil && errb == nil && ida == idb && bytes.Equal(texta, textb)
}

// cutName returns the tile path ("tile/…") of a store file name
// "<name>/tile/…" of database name.
func cutName(file, name string) (string, bool) {
	rest, ok := strings.CutPrefix(file, name+"/")
	return rest, ok && strings.HasPrefix(rest, "tile/")
}

// reportBadData records checksum-database data that failed authentication
// (from the store or from a source): a security event, counted and logged
// at Error. Unlike a fork (reportSecurity) it does not stop verification:
// the bad data is dropped and the database asked again.
func (v *Verifier) reportBadData(msg string) {
	v.metrics.security.WithLabelValues(v.name).Inc()
	v.log.Error("checksum database SECURITY ERROR: data failed authentication against the signed tree", "detail", msg)
}
