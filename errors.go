package dim

import "errors"

// Sentinel errors. Every error dim returns wraps one of these with detail, so
// callers branch with [errors.Is].
var (
	// ErrInvalidOption reports an option New cannot accept, or a missing
	// required one.
	ErrInvalidOption = errors.New("dim: invalid option")
	// ErrInvalidNode reports a node that Balance cannot use: an empty or
	// duplicate ID, or a weight outside 0..MaxWeight.
	ErrInvalidNode = errors.New("dim: invalid node")
	// ErrInvalidKey reports an empty config key.
	ErrInvalidKey = errors.New("dim: invalid key")
	// ErrDuplicateKey reports two configs with the same key in one result of
	// getConfig. No call returns it: dim logs it, records it on the span and
	// in Status (a node's ConfigError), and keeps what runs.
	ErrDuplicateKey = errors.New("dim: duplicate config key")
	// ErrInvalidConfig reports a config dim cannot key: nil, or not
	// encodable as JSON when no WithKey is given, or a bad placement. No
	// call returns it: dim logs it and records it on the span and in Status,
	// and keeps what runs.
	ErrInvalidConfig = errors.New("dim: invalid config")
	// ErrCallback reports a user callback that panicked or did not return
	// within the callback timeout. No call returns it: dim logs it and
	// records it on the span, and a key's LastError in Status carries it.
	ErrCallback = errors.New("dim: callback failed")
	// ErrRedis reports that Redis could not be reached or refused a command
	// dim needs.
	ErrRedis = errors.New("dim: redis unavailable")
	// ErrNodeIDInUse reports that a live session holds this node's ID: a
	// second process with the same ID, or the node's own previous lease.
	// Start waits for it to expire, within its context.
	ErrNodeIDInUse = errors.New("dim: node ID in use")
	// ErrRebalance reports a rebalance that the leader tried and could not
	// complete; the error carries its reason.
	ErrRebalance = errors.New("dim: rebalance failed")
	// ErrServiceLive reports that a service still has live nodes: Purge
	// refuses to remove it.
	ErrServiceLive = errors.New("dim: service is live")
	// ErrUnknownNode reports a node that is not a live member of the
	// service: it cannot be drained.
	ErrUnknownNode = errors.New("dim: unknown node")
	// ErrLastNode reports a drain that would leave no node to run keys.
	ErrLastNode = errors.New("dim: the last node that takes keys")
	// ErrFrozen reports a freeze requested while one is in force.
	ErrFrozen = errors.New("dim: already frozen")
	// ErrUnknownKey reports a key of which Redis holds nothing.
	ErrUnknownKey = errors.New("dim: unknown key")
	// ErrUnknownService reports a service of which Redis holds nothing.
	ErrUnknownService = errors.New("dim: unknown service")
	// ErrAlreadyStarted reports a second call of Start.
	ErrAlreadyStarted = errors.New("dim: already started")
	// ErrNotStarted reports a call that needs a running Manager before Start.
	ErrNotStarted = errors.New("dim: not started")
	// ErrOtherVersion reports that Redis holds the service's membership
	// record in a layout this version of dim does not share: nodes of an
	// older dim are live in the service, or the key is not dim's. Start
	// refuses to join rather than run beside nodes that cannot see its
	// leases.
	ErrOtherVersion = errors.New("dim: the service runs another dim version")
	// ErrStopped reports a call on a Manager that was stopped; a stopped
	// Manager cannot be started again.
	ErrStopped = errors.New("dim: stopped")
)
