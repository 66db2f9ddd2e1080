package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBroadcasterNeverWaitsForASlowPage(t *testing.T) {
	b := newBroadcaster()
	slow, leaveSlow := b.subscribe()
	defer leaveSlow()
	fast, leaveFast := b.subscribe()

	// The slow page takes nothing; publishing still returns every time, and
	// the fast page sees each snapshot.
	for _, msg := range []string{"one", "two", "three"} {
		b.publish([]byte(msg))
		assert.Equal(t, msg, string(<-fast.ch))
	}
	assert.Equal(t, "three", string(<-slow.ch), "a slow page gets the latest snapshot, not the oldest")
	select {
	case msg := <-slow.ch:
		t.Fatalf("a slow page has more than one snapshot waiting: %q", msg)
	default:
	}

	leaveFast()
	assert.Equal(t, 1, b.count())
	b.publish([]byte("four"))
	select {
	case msg := <-fast.ch:
		t.Fatalf("a page that left still gets snapshots: %q", msg)
	default:
	}
}

func TestBroadcasterGivesANewPageTheLatestAndWakesThePoller(t *testing.T) {
	b := newBroadcaster()
	require.Nil(t, b.latest())
	first, leave := b.subscribe()
	defer leave()
	select {
	case <-first.ch:
		t.Fatal("a snapshot before any was published")
	default:
	}
	<-b.wake
	b.publish([]byte("now"))
	<-first.ch
	second, leave2 := b.subscribe()
	defer leave2()
	assert.Equal(t, "now", string(<-second.ch), "a new page starts with the latest snapshot")
	select {
	case <-b.wake:
	default:
		t.Fatal("a new page does not ask the poller for a fresh snapshot")
	}
	assert.Equal(t, "now", string(b.latest()))
}
