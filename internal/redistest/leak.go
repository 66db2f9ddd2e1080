package redistest

import "go.uber.org/goleak"

// GoleakOptions returns the options that let [goleak.VerifyTestMain] pass in
// packages whose tests use rueidis clients, cluster clients especially.
//
// rueidis (v1.0.79) starts goroutines that sleep before they act and are not
// stopped by Client.Close: the cluster client closes connections replaced by
// a topology refresh 5 s later, and delays repeated refreshes. They end by
// themselves, but after the last test. The options ignore exactly those
// goroutines, by function name, and keep goleak strict for everything else;
// a rueidis upgrade that renames them shows up as a reported leak.
//
//	func TestMain(m *testing.M) {
//		goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
//	}
func GoleakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"),
	}
}
