package chaos

import (
	"os"
	"testing"

	"github.com/go-dim/dim/internal/redistest"
	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them, and
// removes the node program built for them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(redistest.GoleakOptions(), goleak.Cleanup(func(code int) {
		RemoveNodeBinary()
		os.Exit(code)
	}))...)
}
