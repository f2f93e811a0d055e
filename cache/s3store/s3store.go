// Package s3store keeps modproxy's store in an S3-compatible bucket (AWS
// S3, GCS's S3 API, Ceph RGW, MinIO, R2, SeaweedFS), so that several
// replicas share one store. It implements the same contract as the bbolt
// store (see cache/storetest) with the bucket's own atomic operations and
// no lock service:
//
//   - An artifact is one object, written by a single PutObject with
//     If-None-Match: *. S3 makes an object visible only once its upload is
//     complete, so a reader never sees a partial artifact, and a killed
//     writer leaves nothing. The first writer wins; a loser gets
//     412 Precondition Failed and returns the winner's Meta.
//   - Mutable entries are objects replaced by plain puts; SwapEntry (the
//     checksum database's tree head) is a compare-and-swap with If-Match
//     on the ETag read, so the head never moves backwards.
//   - Upstream fetches are deduplicated across replicas by a lease object
//     (see Lease), written with If-None-Match: * and an expiry.
//
// # Object layout (under the configured prefix)
//
//	a/<path>/@v/<version>.<kind>       artifact content; its Meta in the x-amz-meta-modproxy header
//	q/<path>/@v/<version>.<kind>/<ns>  a quarantined copy, with x-amz-meta-modproxy-reason
//	e/<key>                            mutable entry value; x-amz-meta-modproxy-fetched
//	kv/<bucket>/<key>                  immutable small data (checksum-database tiles, records)
//	lease/<path>/@v/<version>.<kind>   a replica's claim to fetch an artifact
//	sys/ping                           written by Ping
//
// Paths and versions are decoded (not case-encoded): S3 keys are
// case-sensitive UTF-8.
package s3store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/mod/semver"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
)

// Config configures a Store.
type Config struct {
	Bucket    string
	Prefix    string // key prefix, e.g. "modproxy/"; "" for the bucket's root
	Endpoint  string // base URL of an S3-compatible service; "" for AWS
	Region    string // "" takes the AWS configuration's (environment, shared config)
	PathStyle bool   // bucket in the URL path (MinIO, Ceph, moto), not the host name
	// HTTPClient sends the requests; nil means the SDK's default.
	HTTPClient *http.Client
	// TempDir holds content being uploaded; default os.TempDir().
	TempDir string
	// OpTimeout bounds one request other than an artifact upload or
	// download; default 30s.
	OpTimeout time.Duration
	// TransferTimeout bounds one artifact upload; default 10m.
	TransferTimeout time.Duration
	// LeaseTTL is how long a fetch lease lasts unrenewed; default
	// DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Store is an S3-backed store. It is safe for concurrent use, also by
// several processes on one bucket and prefix.
type Store struct {
	c   *s3.Client
	cfg Config

	leaseWaits, expiredTakeovers atomic.Int64
}

// New returns a Store on cfg's bucket. Credentials come from the standard
// AWS chain: environment, shared config and credentials files, web
// identity (IRSA), container or instance role. It checks that the bucket
// can be reached.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 store: no bucket")
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 30 * time.Second
	}
	if cfg.TransferTimeout <= 0 {
		cfg.TransferTimeout = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.HTTPClient != nil {
		opts = append(opts, config.WithHTTPClient(cfg.HTTPClient))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 store: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("s3 store: no region (give --s3-region or set AWS_REGION)")
	}
	c := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Checksums only where the service requires them: several
		// S3-compatible services reject the newer default trailers.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	s := &Store{c: c, cfg: cfg}
	octx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	defer cancel()
	if _, err := c.HeadBucket(octx, &s3.HeadBucketInput{Bucket: aws.String(cfg.Bucket)}); err != nil {
		return nil, fmt.Errorf("s3 store: bucket %s: %w", cfg.Bucket, err)
	}
	return s, nil
}

// Close releases nothing: the Store holds no resources between calls.
func (s *Store) Close() error { return nil }

// String names the store for logs.
func (s *Store) String() string { return "s3://" + s.cfg.Bucket + "/" + s.cfg.Prefix }

func (s *Store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.cfg.OpTimeout)
}

func (s *Store) artifactKey(k cache.Key) string {
	return s.cfg.Prefix + "a/" + k.Path + "/@v/" + k.Version + "." + string(k.Kind)
}

// parseArtifactKey parses what follows the "a/" of an artifact's key.
func parseArtifactKey(rest string) (cache.Key, bool) {
	i := strings.LastIndex(rest, "/@v/")
	if i < 0 {
		return cache.Key{}, false
	}
	file := rest[i+len("/@v/"):]
	j := strings.LastIndexByte(file, '.')
	if j < 0 {
		return cache.Key{}, false
	}
	k := cache.Key{Path: rest[:i], Version: file[:j], Kind: cache.Kind(file[j+1:])}
	return k, validKey(k) == nil
}

func validKey(k cache.Key) error {
	switch {
	case k.Path == "" || k.Version == "":
		return fmt.Errorf("invalid key %q: empty path or version", k)
	case k.Kind != cache.KindInfo && k.Kind != cache.KindMod && k.Kind != cache.KindZip:
		return fmt.Errorf("invalid key %q: unknown kind", k)
	case strings.ContainsAny(k.Path+k.Version, "\x00@") || strings.Contains(k.Version, "/") ||
		strings.HasPrefix(k.Path, "/") || strings.HasSuffix(k.Path, "/") || strings.Contains(k.Path, "//"):
		return fmt.Errorf("invalid key %q", k)
	}
	return nil
}

func validState(st cache.State) bool {
	return st == "" || st == cache.StateVerified || st == cache.StateExempt || st == cache.StateUnverified
}

// metaHeader is the user-metadata name holding an artifact's Meta.
const metaHeader = "modproxy"

// storedMeta is an artifact's Meta as stored with its object.
type storedMeta struct {
	V        int       `json:"v"`
	Size     int64     `json:"size"`
	Created  time.Time `json:"created"`
	SHA256   string    `json:"sha256"`
	Hash     string    `json:"hash,omitempty"`
	Upstream string    `json:"upstream,omitempty"`
	State    string    `json:"state,omitempty"`
	Proof    string    `json:"proof,omitempty"`
}

// maxMetaHeader is what AWS allows for all user metadata of an object.
const maxMetaHeader = 2 << 10

func encodeMeta(m cache.Meta) (string, error) {
	b, err := json.Marshal(storedMeta{V: 1, Size: m.Size, Created: m.Created, SHA256: hex.EncodeToString(m.SHA256[:]),
		Hash: m.Hash, Upstream: m.Upstream, State: string(m.State), Proof: m.Proof})
	if err != nil {
		return "", err
	}
	// Header values must be ASCII without line breaks: Proof has them.
	v := base64.RawURLEncoding.EncodeToString(b)
	if len(v) > maxMetaHeader-len(metaHeader) {
		return "", fmt.Errorf("artifact metadata is %d bytes, over S3's %d-byte limit", len(v), maxMetaHeader)
	}
	return v, nil
}

func decodeMeta(md map[string]string, size int64) (cache.Meta, error) {
	v, ok := md[metaHeader]
	if !ok {
		return cache.Meta{}, errors.New("object has no modproxy metadata (not written by modproxy?)")
	}
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return cache.Meta{}, fmt.Errorf("modproxy metadata: %w", err)
	}
	var sm storedMeta
	if err := json.Unmarshal(b, &sm); err != nil {
		return cache.Meta{}, fmt.Errorf("modproxy metadata: %w", err)
	}
	if sm.V != 1 {
		return cache.Meta{}, fmt.Errorf("modproxy metadata version %d (this build reads 1)", sm.V)
	}
	m := cache.Meta{Size: sm.Size, Created: sm.Created, Hash: sm.Hash, Upstream: sm.Upstream, State: cache.State(sm.State), Proof: sm.Proof}
	if h, err := hex.DecodeString(sm.SHA256); err != nil || len(h) != 32 {
		return cache.Meta{}, fmt.Errorf("modproxy metadata: bad sha256 %q", sm.SHA256)
	} else {
		copy(m.SHA256[:], h)
	}
	if size != m.Size {
		return cache.Meta{}, fmt.Errorf("%w: object has %d bytes, its metadata says %d", errCorrupt, size, m.Size)
	}
	return m, nil
}

var errCorrupt = errors.New("damaged object")

// statusOf returns the HTTP status of a failed request, 0 if none.
func statusOf(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// notFound wraps err with cache.ErrNotFound when S3 answered 404.
func notFound(err error) error {
	if statusOf(err) == http.StatusNotFound {
		return fmt.Errorf("%w (%v)", cache.ErrNotFound, err)
	}
	return err
}

// conflict reports a lost conditional write: 412, or 409 when S3 saw a
// concurrent conditional write to the key.
func conflict(err error) bool {
	st := statusOf(err)
	return st == http.StatusPreconditionFailed || st == http.StatusConflict
}

type objectInfo struct {
	meta cache.Meta
	etag string
}

func (s *Store) head(key string) (objectInfo, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	out, err := s.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(key)})
	if err != nil {
		return objectInfo{}, notFound(err)
	}
	m, err := decodeMeta(out.Metadata, aws.ToInt64(out.ContentLength))
	if err != nil {
		return objectInfo{}, err
	}
	return objectInfo{meta: m, etag: aws.ToString(out.ETag)}, nil
}

// Stat returns the Meta of a stored artifact.
func (s *Store) Stat(k cache.Key) (cache.Meta, error) {
	if err := validKey(k); err != nil {
		return cache.Meta{}, fmt.Errorf("stat %s: %w", k, err)
	}
	oi, err := s.head(s.artifactKey(k))
	if err != nil {
		return cache.Meta{}, fmt.Errorf("stat %s: %w", k, err)
	}
	return oi.meta, nil
}

// Get returns the whole content of a stored artifact (meant for .info and
// .mod; use Open to stream zips).
func (s *Store) Get(k cache.Key) ([]byte, cache.Meta, error) {
	if err := validKey(k); err != nil {
		return nil, cache.Meta{}, fmt.Errorf("get %s: %w", k, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.TransferTimeout)
	defer cancel()
	out, err := s.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.artifactKey(k))})
	if err != nil {
		return nil, cache.Meta{}, fmt.Errorf("get %s: %w", k, notFound(err))
	}
	defer out.Body.Close()
	m, err := decodeMeta(out.Metadata, aws.ToInt64(out.ContentLength))
	if err != nil {
		return nil, cache.Meta{}, fmt.Errorf("get %s: %w", k, err)
	}
	data := make([]byte, m.Size)
	if _, err := io.ReadFull(out.Body, data); err != nil {
		return nil, cache.Meta{}, fmt.Errorf("get %s: %w", k, err)
	}
	if sha256.Sum256(data) != m.SHA256 {
		return nil, cache.Meta{}, fmt.Errorf("get %s: %w: content does not match its SHA-256", k, errCorrupt)
	}
	return data, m, nil
}

// Open returns a reader of a stored artifact. Its reads are ranged GETs
// conditional on the object's ETag, so that a reader whose artifact was
// deleted (and perhaps stored again) fails instead of mixing contents.
func (s *Store) Open(k cache.Key) (cache.ArtifactReader, error) {
	if err := validKey(k); err != nil {
		return nil, fmt.Errorf("open %s: %w", k, err)
	}
	key := s.artifactKey(k)
	oi, err := s.head(key)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", k, err)
	}
	return &reader{s: s, key: key, name: k.String(), oi: oi}, nil
}

// Put stores the content read from r under k unless k is stored already,
// and returns the stored Meta (see the package comment). m supplies Hash,
// Upstream, State, Proof and optionally Created, Size and SHA256, which must
// match the content when non-zero.
//
// The content is spooled to a temporary file (so memory does not grow with
// it, and the upload has a known length), then uploaded in one conditional
// PutObject.
func (s *Store) Put(k cache.Key, r io.Reader, m cache.Meta, _ grant.Write) (cache.Meta, error) {
	meta, err := s.put(k, r, m)
	if err != nil {
		return cache.Meta{}, fmt.Errorf("put %s@%s.%s: %w", k.Path, k.Version, k.Kind, err)
	}
	return meta, nil
}

func (s *Store) put(k cache.Key, r io.Reader, want cache.Meta) (cache.Meta, error) {
	if err := validKey(k); err != nil {
		return cache.Meta{}, err
	}
	if want.Size < 0 {
		return cache.Meta{}, fmt.Errorf("negative size %d", want.Size)
	}
	if !validState(want.State) {
		return cache.Meta{}, fmt.Errorf("invalid state %q", want.State)
	}
	key := s.artifactKey(k)
	if oi, err := s.head(key); err == nil {
		return oi.meta, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return cache.Meta{}, err
	}

	f, err := os.CreateTemp(s.cfg.TempDir, "modproxy-s3put-*")
	if err != nil {
		return cache.Meta{}, fmt.Errorf("spool: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	src := r
	if want.Size > 0 {
		src = io.LimitReader(r, want.Size+1)
	}
	n, err := io.Copy(io.MultiWriter(f, h), src)
	if err != nil {
		return cache.Meta{}, err
	}
	if want.Size > 0 && n != want.Size {
		return cache.Meta{}, fmt.Errorf("content is %d bytes or more, expected %d", n, want.Size)
	}
	meta := cache.Meta{Size: n, Created: want.Created, Hash: want.Hash, Upstream: want.Upstream, State: want.State, Proof: want.Proof}
	h.Sum(meta.SHA256[:0])
	if want.SHA256 != ([32]byte{}) && want.SHA256 != meta.SHA256 {
		return cache.Meta{}, fmt.Errorf("content SHA-256 %x, expected %x", meta.SHA256, want.SHA256)
	}
	if meta.Created.IsZero() {
		meta.Created = s.cfg.Now()
	}
	meta.Created = meta.Created.UTC().Round(0)
	hdr, err := encodeMeta(meta)
	if err != nil {
		return cache.Meta{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return cache.Meta{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.TransferTimeout)
	defer cancel()
	_, err = s.c.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        &s.cfg.Bucket,
		Key:           aws.String(key),
		Body:          f,
		ContentLength: aws.Int64(n),
		IfNoneMatch:   aws.String("*"),
		Metadata:      map[string]string{metaHeader: hdr},
		ContentType:   aws.String("application/octet-stream"),
	})
	if err == nil {
		return meta, nil
	}
	if !conflict(err) {
		return cache.Meta{}, fmt.Errorf("upload: %w", err)
	}
	// Lost to another writer: theirs is the artifact. A 409 means their
	// write may still be in flight; wait briefly for it to land.
	for i := 0; ; i++ {
		oi, herr := s.head(key)
		if herr == nil {
			return oi.meta, nil
		}
		if !errors.Is(herr, cache.ErrNotFound) || i == 20 {
			return cache.Meta{}, fmt.Errorf("lost the write to another writer, whose object cannot be read: %w", herr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Delete removes a stored artifact, wrapping cache.ErrNotFound if there is
// none. Quarantined copies stay (they are not the artifact).
func (s *Store) Delete(k cache.Key) error {
	if err := validKey(k); err != nil {
		return fmt.Errorf("delete %s: %w", k, err)
	}
	key := s.artifactKey(k)
	if _, err := s.head(key); err != nil {
		return fmt.Errorf("delete %s: %w", k, err)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if _, err := s.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(key)}); err != nil {
		return fmt.Errorf("delete %s: %w", k, err)
	}
	return nil
}

// Quarantine copies a stored artifact under q/ with the reason, then
// deletes it, so that a new Put of k may store other content.
func (s *Store) Quarantine(k cache.Key, reason string) error {
	if err := validKey(k); err != nil {
		return fmt.Errorf("quarantine %s: %w", k, err)
	}
	key := s.artifactKey(k)
	oi, err := s.head(key)
	if err != nil {
		return fmt.Errorf("quarantine %s: %w", k, err)
	}
	hdr, err := encodeMeta(oi.meta)
	if err != nil {
		return fmt.Errorf("quarantine %s: %w", k, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.TransferTimeout)
	defer cancel()
	qkey := fmt.Sprintf("%sq/%s/@v/%s.%s/%d", s.cfg.Prefix, k.Path, k.Version, k.Kind, s.cfg.Now().UnixNano())
	_, err = s.c.CopyObject(ctx, &s3.CopyObjectInput{
		Bucket:            &s.cfg.Bucket,
		Key:               aws.String(qkey),
		CopySource:        aws.String(s.cfg.Bucket + "/" + escapePath(key)),
		CopySourceIfMatch: aws.String(oi.etag),
		MetadataDirective: types.MetadataDirectiveReplace,
		Metadata: map[string]string{
			metaHeader:             hdr,
			metaHeader + "-reason": base64.RawURLEncoding.EncodeToString([]byte(reason)),
		},
	})
	if err != nil {
		return fmt.Errorf("quarantine %s: copy aside: %w", k, notFound(err))
	}
	if _, err := s.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(key)}); err != nil {
		return fmt.Errorf("quarantine %s: delete: %w", k, err)
	}
	return nil
}

// escapePath percent-encodes a key for CopySource, keeping slashes.
func escapePath(key string) string {
	parts := strings.Split(key, "/")
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(url.PathEscape(p), "+", "%2B")
	}
	return strings.Join(parts, "/")
}

// list calls fn with every key under prefix (with delimiter "" ).
func (s *Store) list(prefix string, fn func(key string, size int64) error) error {
	p := s3.NewListObjectsV2Paginator(s.c, &s3.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		ctx, cancel := s.ctx()
		page, err := p.NextPage(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, o := range page.Contents {
			if err := fn(aws.ToString(o.Key), aws.ToInt64(o.Size)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Versions returns the versions of path with a stored .info, sorted by
// semantic version.
func (s *Store) Versions(path string) ([]string, error) {
	if err := validKey(cache.Key{Path: path, Version: "v0", Kind: cache.KindInfo}); err != nil {
		return nil, fmt.Errorf("versions of %q: invalid module path", path)
	}
	prefix := s.cfg.Prefix + "a/" + path + "/@v/"
	var versions []string
	err := s.list(prefix, func(key string, _ int64) error {
		file := key[len(prefix):]
		if v, ok := strings.CutSuffix(file, ".info"); ok && !strings.Contains(v, "/") {
			versions = append(versions, v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("versions of %s: %w", path, err)
	}
	semver.Sort(versions)
	return versions, nil
}

// walkHeads bounds the HEAD requests of a Walk in flight at once.
const walkHeads = 8

// Walk calls fn for every stored artifact, ordered by path, version and
// kind as the bbolt store orders them. Listing does not return user
// metadata, so Walk reads every artifact's Meta with a HEAD request (a few
// in parallel): it costs one request per artifact, and is meant for
// background work (verification, export), not for serving.
func (s *Store) Walk(fn func(cache.Key, cache.Meta) error) error {
	root := s.cfg.Prefix + "a/"
	var keys []cache.Key
	err := s.list(root, func(key string, _ int64) error {
		if k, ok := parseArtifactKey(key[len(root):]); ok {
			keys = append(keys, k)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk store: %w", err)
	}
	slices.SortFunc(keys, func(a, b cache.Key) int {
		return bytes.Compare(sortKey(a), sortKey(b))
	})
	for start := 0; start < len(keys); start += 64 {
		batch := keys[start:min(start+64, len(keys))]
		metas := make([]cache.Meta, len(batch))
		errs := make([]error, len(batch))
		var wg sync.WaitGroup
		sem := make(chan struct{}, walkHeads)
		for i, k := range batch {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				metas[i], errs[i] = s.Stat(k)
			}()
		}
		wg.Wait()
		for i, k := range batch {
			if errors.Is(errs[i], cache.ErrNotFound) {
				continue // deleted since it was listed
			}
			if errs[i] != nil {
				return fmt.Errorf("walk store: %w", errs[i])
			}
			if err := fn(k, metas[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// sortKey is the bbolt store's key order: path 0x00 version 0x00 kind.
func sortKey(k cache.Key) []byte {
	return []byte(k.Path + "\x00" + k.Version + "\x00" + string(k.Kind))
}

// fetchedHeader is the user-metadata name of an entry's fetched time.
const fetchedHeader = "modproxy-fetched"

func (s *Store) entryKey(key string) string { return s.cfg.Prefix + "e/" + key }

// getEntry returns the entry at key and its object's ETag.
func (s *Store) getEntry(key string) (cache.Entry, string, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	out, err := s.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.entryKey(key))})
	if err != nil {
		return cache.Entry{}, "", notFound(err)
	}
	defer out.Body.Close()
	v, err := io.ReadAll(io.LimitReader(out.Body, 64<<20))
	if err != nil {
		return cache.Entry{}, "", err
	}
	e := cache.Entry{Value: v}
	if t, err := time.Parse(time.RFC3339Nano, out.Metadata[fetchedHeader]); err == nil {
		e.Fetched = t
	} else {
		e.Fetched = aws.ToTime(out.LastModified)
	}
	return e, aws.ToString(out.ETag), nil
}

// GetEntry returns the mutable entry at key, wrapping cache.ErrNotFound.
func (s *Store) GetEntry(key string) (cache.Entry, error) {
	e, _, err := s.getEntry(key)
	if err != nil {
		return cache.Entry{}, fmt.Errorf("get entry %q: %w", key, err)
	}
	return e, nil
}

func (s *Store) putEntry(key string, value []byte, cond func(*s3.PutObjectInput)) error {
	ctx, cancel := s.ctx()
	defer cancel()
	in := &s3.PutObjectInput{
		Bucket:        &s.cfg.Bucket,
		Key:           aws.String(s.entryKey(key)),
		Body:          bytes.NewReader(value),
		ContentLength: aws.Int64(int64(len(value))),
		Metadata:      map[string]string{fetchedHeader: s.cfg.Now().UTC().Format(time.RFC3339Nano)},
	}
	if cond != nil {
		cond(in)
	}
	_, err := s.c.PutObject(ctx, in)
	return err
}

// PutEntry replaces the mutable entry at key, fetched now.
func (s *Store) PutEntry(key string, value []byte) error {
	if err := s.putEntry(key, value, nil); err != nil {
		return fmt.Errorf("put entry %q: %w", key, err)
	}
	return nil
}

// SwapEntry replaces the entry at key with new if its value is old (empty
// old: if there is none), and reports whether it did. The write is
// conditional on the ETag read (If-Match), or on absence (If-None-Match),
// so of several replicas swapping from one value exactly one succeeds.
func (s *Store) SwapEntry(key string, old, new []byte) (bool, error) {
	e, etag, err := s.getEntry(key)
	var cond func(*s3.PutObjectInput)
	switch {
	case errors.Is(err, cache.ErrNotFound):
		if len(old) != 0 {
			return false, nil
		}
		cond = func(in *s3.PutObjectInput) { in.IfNoneMatch = aws.String("*") }
	case err != nil:
		return false, fmt.Errorf("swap entry %q: %w", key, err)
	default:
		if len(old) == 0 || !bytes.Equal(e.Value, old) {
			return false, nil
		}
		cond = func(in *s3.PutObjectInput) { in.IfMatch = aws.String(etag) }
	}
	err = s.putEntry(key, new, cond)
	switch {
	case err == nil:
		return true, nil
	case conflict(err) || statusOf(err) == http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("swap entry %q: %w", key, err)
}

func (s *Store) kvKey(bucket, key string) string { return s.cfg.Prefix + "kv/" + bucket + "/" + key }

// GetKV returns the value at key in bucket, wrapping cache.ErrNotFound.
func (s *Store) GetKV(bucket, key string) ([]byte, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	out, err := s.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.kvKey(bucket, key))})
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", bucket, key, notFound(err))
	}
	defer out.Body.Close()
	v, err := io.ReadAll(io.LimitReader(out.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", bucket, key, err)
	}
	return v, nil
}

// PutKV stores value at key in bucket.
func (s *Store) PutKV(bucket, key string, value []byte) error {
	if bucket == "" {
		return fmt.Errorf("put %s/%s: empty bucket name", bucket, key)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	_, err := s.c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &s.cfg.Bucket, Key: aws.String(s.kvKey(bucket, key)),
		Body: bytes.NewReader(value), ContentLength: aws.Int64(int64(len(value))),
	})
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// DeleteKV removes key from bucket; a missing key is no error.
func (s *Store) DeleteKV(bucket, key string) error {
	ctx, cancel := s.ctx()
	defer cancel()
	if _, err := s.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.kvKey(bucket, key))}); err != nil && statusOf(err) != http.StatusNotFound {
		return fmt.Errorf("delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Ping writes a small object, proving the bucket is reachable and
// writable with these credentials, for /readyz.
func (s *Store) Ping() error {
	ctx, cancel := s.ctx()
	defer cancel()
	v := []byte(s.cfg.Now().UTC().Format(time.RFC3339Nano))
	_, err := s.c.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.cfg.Prefix + "sys/ping"),
		Body: bytes.NewReader(v), ContentLength: aws.Int64(int64(len(v)))})
	if err != nil {
		return fmt.Errorf("ping %s: %w", s, err)
	}
	return nil
}
