// Package seek resolves io.Seeker arguments for the store backends'
// readers, which share the rules: whence is one of io.SeekStart,
// io.SeekCurrent and io.SeekEnd, and a position past the end is allowed
// (reads there return io.EOF) but a negative one is not.
package seek

import (
	"fmt"
	"io"
)

// Abs returns the absolute position that Seek(offset, whence) names for a
// reader at cur in content of size bytes.
func Abs(cur, size, offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = cur + offset
	case io.SeekEnd:
		abs = size + offset
	default:
		return 0, fmt.Errorf("invalid whence %d", whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("negative position %d", abs)
	}
	return abs, nil
}
