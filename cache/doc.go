// Package cache is modproxy's store of record: a single bbolt file holding
// immutable module artifacts (.info, .mod, .zip), mutable entries with the
// time they were fetched (list, @latest, checksum-database latest), and small
// immutable key/value data (checksum-database tiles and lookups).
//
// # Bucket layout
//
// All integers are big-endian unless marked uvarint/varint
// (encoding/binary).
//
//	artifacts   path 0x00 version 0x00 kind        -> artifact record
//	quarantine  path 0x00 version 0x00 kind 0x00 blobID(8)
//	                                               -> quarantine record
//	chunks      blobID(8) chunkIndex(4)            -> content bytes [crc32c(4)]
//	blobs       blobID(8) (nested bucket, one per blob of format 3)
//	              chunkIndex(4)                    -> content bytes crc32c(4)
//	pending     blobID(8)                          -> varint unix-nano time
//	meta        caller's key ("list/<path>", ...)  -> entry record (mutable entries)
//	kv          caller's bucket name (nested bucket)
//	              caller's key                     -> caller's value
//	sys         "schema"                           -> 0x03 (0x02: before blobs, 0x01: before chunk checksums)
//	            "heartbeat"                        -> varint unix-nano time (Ping)
//	            "n:info" "b:info" ... "n:q" "b:q"  -> int64(8) artifact count / content bytes
//
// Paths and versions are decoded (not case-encoded) and never contain 0x00,
// so the artifact keys of one path form the contiguous range with the prefix
// path 0x00, sorted by version bytes then kind.
//
// # Records
//
// An artifact record is
//
//	format uvarint(size) varint(created unix-nano) sha256[32]
//	uvarint(blobID) uvarint(chunkSize) uvarint(chunkCount)
//	uvarint(len) hash  uvarint(len) upstream
//	uvarint(len) state  uvarint(len) proof
//	[crc32c(4)]
//
// The state and proof fields were added later; a record that ends after
// upstream decodes as state "verified" when it has a hash and
// "unverified" otherwise.
//
// Format 2 (what Put writes) adds checksums: the record ends with a CRC-32C
// (Castagnoli) of its artifacts-bucket key and the record bytes before it,
// and every chunk of its blob ends with a CRC-32C of the chunk's key and
// content. The keys are covered so that a record or chunk found under a
// damaged key fails its check instead of serving one artifact's bytes as
// another's. Every read checks them (see Reader); a failure is an error
// wrapping ErrCorrupt, counted in Corruptions and, with
// Options.QuarantineCorrupt, quarantines the artifact. Format 1 records
// (stores of schema 1, upgraded in place by a writable Open) have neither:
// their chunks are read unchecked, and verify re-hashes their content.
//
// Format 3 is format 2 with the blob's chunks in a bucket of its own in
// blobs, keyed by index alone; their checksums still cover the chunks-bucket
// key (blob and index). Put uses it for content of 16 KiB and more: a bbolt
// leaf holds up to four values whatever their size and a commit rewrites
// it whole, so in the shared bucket every new blob rewrote the last chunks
// of the blobs before it (2.1 to 3.2 times the content written to the
// file, against 1.3 to 1.4 times now). Smaller content stays in
// chunks, where a page of its own would cost more. Stores of schema 2 and
// earlier have no blobs bucket until a writable Open creates it.
//
// A quarantine record is 0x01 varint(quarantined unix-nano) uvarint(len)
// reason, followed by the artifact record it replaced. An entry record is
// 0x01 varint(fetched unix-nano) followed by the value. Readers reject an
// unknown leading format byte instead of guessing.
//
// # Invariants
//
//   - Content is split into chunks of the record's chunkSize; every chunk but
//     the last is full, the last holds 1..chunkSize bytes, and an empty
//     artifact has no chunks. The chunk size lives in the record, so changing
//     Options.ChunkSize never misreads older artifacts.
//   - Blob IDs come from the chunks bucket's sequence, for both layouts,
//     and are never reused, so a Reader whose artifact was deleted under it
//     finds missing chunks (an error), never another artifact's bytes.
//   - A blob's chunks are all in chunks or all in its bucket in blobs, as
//     its record's format says.
//   - Every blob in the chunks or blobs bucket is referenced by exactly one artifact
//     or quarantine record, or is listed in pending. A blob enters pending in
//     the same transaction that writes its first staged chunk (Put) or that
//     drops its record (Delete), and leaves it in the transaction that
//     publishes it or deletes its last chunk. Open garbage-collects whatever
//     a killed process left there.
//   - An artifact is visible exactly when its record is in artifacts. The
//     record is written in one transaction after all its chunks are
//     committed, so a reader sees the whole artifact or nothing.
//   - Artifacts enter only through cache/gate: Put and CopyTo take a
//     grant.Write, which packages outside cache/ cannot name.
//   - An artifact key is written at most once: the first Put to commit wins
//     and later Puts return the stored Meta. Only Quarantine and Delete
//     remove a record.
//   - The sys counters are updated in the same transaction as the records
//     they count, so Stats is exact and O(1).
//   - No read transaction is held across calls into caller code or across
//     Reader calls (see Reader), and no write transaction is held while
//     reading a caller's io.Reader. A long read transaction blocks bbolt's
//     remap and so stalls every writer; a write transaction held across a
//     slow upstream would serialize the whole server behind it.
//
// # Damaged files
//
// bbolt trusts its pages: a damaged page makes it panic or fault, and when
// a file has no freelist written (stores of earlier builds) its writable
// Open walks every page in a goroutine whose panics no caller can recover.
// Open therefore checks the file first (checkFile: bounds-checked reads, at
// least bbolt's own rules; the whole tree when bbolt would walk it, else the
// freelist page it reads), refuses an empty, foreign or damaged file with an
// error (ErrNotStore, ErrCorrupt) and never initializes or overwrites it;
// every transaction recovers bbolt's panics and faults into ErrCorrupt, and
// after one in a write transaction the store refuses further writes. Salvage reads a damaged file without
// bbolt and copies whatever is intact into a new store.
//
// # Concurrency and processes
//
// A Store is safe for concurrent use by multiple goroutines. bbolt locks the
// file: one process opens a store for writing, and a second Open fails after
// Options.LockTimeout with an error wrapping ErrLocked. Other processes
// (prewarm, verify) talk to the running server over HTTP instead.
package cache
