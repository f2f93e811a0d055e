package seek

import (
	"io"
	"testing"
)

func TestAbs(t *testing.T) {
	for _, tc := range []struct {
		cur, size, offset int64
		whence            int
		want              int64
		err               string
	}{
		{cur: 5, size: 10, offset: 3, whence: io.SeekStart, want: 3},
		{cur: 5, size: 10, offset: 3, whence: io.SeekCurrent, want: 8},
		{cur: 5, size: 10, offset: -3, whence: io.SeekEnd, want: 7},
		{cur: 5, size: 10, offset: 20, whence: io.SeekStart, want: 20}, // past the end: allowed
		{cur: 5, size: 10, offset: -6, whence: io.SeekCurrent, err: "negative position -1"},
		{cur: 5, size: 10, offset: -11, whence: io.SeekEnd, err: "negative position -1"},
		{cur: 5, size: 10, offset: 0, whence: 3, err: "invalid whence 3"},
	} {
		got, err := Abs(tc.cur, tc.size, tc.offset, tc.whence)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("Abs(%+v) = %d, %v; want error %q", tc, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Abs(%+v) = %d, %v; want %d", tc, got, err, tc.want)
		}
	}
}
