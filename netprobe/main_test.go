package netprobe

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// hangGuard bounds waits for events that must happen: long enough that no
// load on a shared machine reaches it, so reaching it means a hang, never
// slowness.
const hangGuard = 2 * time.Minute
