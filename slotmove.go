package dim

import (
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/redis/rueidis"
)

// While an operator moves the service's Redis Cluster slot to another
// master key by key (CLUSTER SETSLOT … MIGRATING/IMPORTING, then MIGRATE),
// the service's keys are split between two masters, for as long as the
// migration takes: every script with more than one key gets TRYAGAIN there,
// and keeps getting it until the slot is whole again. Scripts with one key
// are served throughout (rueidis follows ASK with ASKING). The heartbeat
// touches the membership record only (see heartbeatScript), so leases are
// renewed and nothing fences; claims, releases, state publications and the
// leader's reads and writes wait, and are tried again at their usual pace.
// slotNotice says so once instead of once per attempt.

// slotMoving is what dim logs, once, when the service's slot is split.
const slotMoving = "the service's Redis Cluster slot is being migrated: leases are renewed and running instances keep running; " +
	"claims, releases, state updates and rebalances wait until the slot is whole again"

// isSlotMoving reports whether err is Redis Cluster's refusal of a command
// whose keys are split between two masters by a slot migration (TRYAGAIN),
// or a redirect the client gave up following (ASK, MOVED).
func isSlotMoving(err error) bool {
	if err == nil {
		return false
	}
	var re *rueidis.RedisError
	if errors.As(err, &re) {
		if re.IsTryAgain() {
			return true
		}
		if _, ok := re.IsAsk(); ok {
			return true
		}
		_, ok := re.IsMoved()
		return ok
	}
	return strings.Contains(err.Error(), "TRYAGAIN")
}

// slotNotice logs a slot migration once at Warn when it is first met, and
// once at Info when a script with many keys succeeds again.
type slotNotice struct {
	on atomic.Bool
}

// saw reports whether err comes from a slot migration, and logs the first
// of a run at Warn, the others at Debug.
func (n *slotNotice) saw(log *slog.Logger, during string, err error) bool {
	if !isSlotMoving(err) {
		return false
	}
	if n.on.CompareAndSwap(false, true) {
		log.Warn(slotMoving, "during", during, "err", err)
	} else {
		log.Debug("waiting for the slot migration", "during", during, "err", err)
	}
	return true
}

// over notes that a script with many keys succeeded: the slot is whole.
func (n *slotNotice) over(log *slog.Logger) {
	if n.on.CompareAndSwap(true, false) {
		log.Info("the service's Redis Cluster slot is whole again; claims, releases and rebalances resume")
	}
}
