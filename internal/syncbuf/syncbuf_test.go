package syncbuf_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/go-dim/dim/internal/syncbuf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Under -race, unsynchronised writes and reads of a bytes.Buffer would be
// reported; every line must also arrive whole.
func TestConcurrentWritesAndReadsKeepEveryLine(t *testing.T) {
	var b syncbuf.Buffer
	const writers, lines = 4, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range lines {
				n, err := fmt.Fprintf(&b, "writer %d line %d\n", w, i)
				assert.NoError(t, err)
				assert.Positive(t, n)
			}
		})
	}
	wg.Go(func() {
		for range lines {
			_ = b.String()
		}
	})
	wg.Wait()

	got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	require.Len(t, got, writers*lines)
	for w := range writers {
		for i := range lines {
			assert.Contains(t, got, fmt.Sprintf("writer %d line %d", w, i))
		}
	}
}

func ExampleBuffer() {
	var b syncbuf.Buffer
	fmt.Fprint(&b, "hello, ")
	fmt.Fprint(&b, "world")
	fmt.Println(b.String())
	// Output: hello, world
}
