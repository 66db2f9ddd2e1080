package dim

// crashForTest stops a Manager as a crash would: its goroutines end, but
// nothing is disconnected, released or removed from Redis. The caller cuts
// its link to Redis first, so not even the lock release gets through.
func (m *Manager[C, I]) crashForTest() {
	m.membership.lease.end() // its fence timer dies with it
	m.runCancel()
	m.wg.Wait()
	m.locker.Close()
	m.client.Close()
	m.life.end()
}
