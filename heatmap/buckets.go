package heatmap

import (
	"strconv"
	"time"
)

// bucketBounds are the inclusive upper bounds of the latency buckets, roughly
// five per decade from 0.5 ms to 60 s with round values so that labels read
// well ("10–15ms"). A duration d falls in bucket i when
// bucketBounds[i-1] < d <= bucketBounds[i] (Prometheus "le" semantics); bucket
// 0 holds everything up to 0.5 ms and the last bucket everything above 60 s.
var bucketBounds = [...]time.Duration{
	500 * time.Microsecond,
	1 * time.Millisecond,
	1500 * time.Microsecond,
	2500 * time.Microsecond,
	4 * time.Millisecond,
	6 * time.Millisecond,
	10 * time.Millisecond,
	15 * time.Millisecond,
	25 * time.Millisecond,
	40 * time.Millisecond,
	60 * time.Millisecond,
	100 * time.Millisecond,
	150 * time.Millisecond,
	250 * time.Millisecond,
	400 * time.Millisecond,
	600 * time.Millisecond,
	1 * time.Second,
	1500 * time.Millisecond,
	2500 * time.Millisecond,
	4 * time.Second,
	6 * time.Second,
	10 * time.Second,
	15 * time.Second,
	25 * time.Second,
	40 * time.Second,
	60 * time.Second,
}

// NumBuckets is the number of latency buckets, including the underflow
// (<= 0.5 ms) and overflow (> 60 s) buckets.
const NumBuckets = len(bucketBounds) + 1

// bucketIndex returns the bucket of d: a branch-light binary search over the
// fixed bounds, no allocation.
func bucketIndex(d time.Duration) int {
	lo, hi := 0, len(bucketBounds) // first bound >= d, in [lo, hi]
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if bucketBounds[m] < d {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// BucketRange returns the bounds of bucket i: lower is exclusive, upper
// inclusive. The first bucket has lower 0; the last has upper -1 (unbounded).
func BucketRange(i int) (lower, upper time.Duration) {
	if i > 0 {
		lower = bucketBounds[i-1]
	}
	if i < len(bucketBounds) {
		upper = bucketBounds[i]
	} else {
		upper = -1
	}
	return lower, upper
}

// bucketLabel renders bucket i for people: "<0.5ms", "10–15ms", "1.5–2.5s", ">60s".
func bucketLabel(i int) string {
	lo, hi := BucketRange(i)
	switch {
	case i == 0:
		return "≤" + fmtDur(hi)
	case hi < 0:
		return ">" + fmtDur(lo)
	}
	// Share the unit when both bounds use it: "10–15ms" rather than "10ms–15ms".
	l, lu := splitDur(lo)
	h, hu := splitDur(hi)
	if lu == hu {
		return l + "–" + h + hu
	}
	return l + lu + "–" + h + hu
}

func fmtDur(d time.Duration) string {
	n, u := splitDur(d)
	return n + u
}

// splitDur formats d as a short number and its unit (ms below one second, s above).
func splitDur(d time.Duration) (num, unit string) {
	if d < time.Second {
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64), "ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64), "s"
}
