package dim

import "fmt"

// Service names one dim service in a Redis, for the functions that read or
// change a service from outside its nodes, as dimctl does: [ReadStatus],
// [ReadSummary], [ReadHistory], [Explain], [Plan], [RequestRebalance],
// [DrainNode], [UndrainNode], [Freeze], [Thaw], [Pin], [Unpin] and
// [Purge]. A [Manager] needs none: it knows its own service.
type Service struct {
	// Name is the service's name, as its nodes give it to [WithService].
	// Required.
	Name string
	// KeyPrefix is the prefix of the service's Redis keys, as its nodes
	// give it to [WithKeyPrefix]; "" for none.
	KeyPrefix string
}

// keys checks the name and the prefix as [WithService] and [WithKeyPrefix]
// do, and returns the service's Redis key names. A bad one gives an error
// wrapping [ErrInvalidOption].
func (svc Service) keys() (keyspace, error) {
	if svc.Name == "" {
		return keyspace{}, fmt.Errorf("%w: Service.Name: a service name is required", ErrInvalidOption)
	}
	if !namePattern.MatchString(svc.Name) {
		return keyspace{}, fmt.Errorf("%w: Service.Name: %q is not a valid service name: use 1-128 letters, digits or . _ : / @ -, starting with a letter or digit", ErrInvalidOption, svc.Name)
	}
	if !prefixPattern.MatchString(svc.KeyPrefix) {
		return keyspace{}, fmt.Errorf("%w: Service.KeyPrefix: %q is not a valid prefix: use at most 64 letters, digits or . _ : / @ -", ErrInvalidOption, svc.KeyPrefix)
	}
	return newKeyspace(svc.KeyPrefix, svc.Name), nil
}
