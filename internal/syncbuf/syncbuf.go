// Package syncbuf provides [Buffer], a byte buffer that one goroutine, or a
// child process, writes while another reads it: a test reading a log as it
// grows, or a program keeping a child's stderr for its error messages.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is a [bytes.Buffer] reduced to writing and reading all of it, safe
// for concurrent use. The zero value is an empty buffer ready to use. A
// Buffer must not be copied after first use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p to the buffer. It always returns len(p), nil.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
