//go:build !linux

package dim

import "time"

// bootClock falls back to the wall clock where there is no CLOCK_BOOTTIME:
// it runs on during a suspend, though a step of the clock moves it too.
func bootClock() time.Duration { return time.Duration(time.Now().UnixNano()) }
