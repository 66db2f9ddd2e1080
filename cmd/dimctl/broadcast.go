package main

import (
	"sync"
)

// broadcaster hands the latest snapshot of a service to every open page
// without waiting for any of them: each subscriber has a mailbox of one
// snapshot that a newer one replaces, so a slow page skips snapshots and
// never holds the poller or the other pages back.
type broadcaster struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
	last []byte
	// wake tells the poller that a page arrived and wants a fresh snapshot.
	wake chan struct{}
}

// subscriber is one open page's mailbox.
type subscriber struct {
	ch chan []byte
}

func newBroadcaster() *broadcaster {
	return &broadcaster{subs: map[*subscriber]struct{}{}, wake: make(chan struct{}, 1)}
}

// subscribe adds a mailbox, holding the latest snapshot if there is one,
// and asks the poller for a fresh one. The returned function removes it.
func (b *broadcaster) subscribe() (*subscriber, func()) {
	s := &subscriber{ch: make(chan []byte, 1)}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	if b.last != nil {
		s.ch <- b.last
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
	return s, func() {
		b.mu.Lock()
		delete(b.subs, s)
		b.mu.Unlock()
	}
}

// publish puts msg in every mailbox, replacing a snapshot not yet taken.
// It never blocks: only publish sends, under the lock, so once a mailbox is
// emptied its one slot is free.
func (b *broadcaster) publish(msg []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = msg
	for s := range b.subs {
		select {
		case <-s.ch: // the page has not taken the previous one: drop it
		default:
		}
		select {
		case s.ch <- msg:
		default:
		}
	}
}

// latest returns the last snapshot published, nil before the first.
func (b *broadcaster) latest() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// count returns how many pages are subscribed.
func (b *broadcaster) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}
