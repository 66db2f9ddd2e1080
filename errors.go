package dim

import "errors"

// Sentinel errors. Every error dim returns wraps one of these with detail, so
// callers branch with [errors.Is].
var (
	// ErrInvalidNode reports a node that Balance cannot use: an empty or
	// duplicate ID, or a weight outside 0..MaxWeight.
	ErrInvalidNode = errors.New("dim: invalid node")
	// ErrInvalidKey reports an empty config key.
	ErrInvalidKey = errors.New("dim: invalid key")
)
