package dim

// keyspace names every Redis key and the channel of one service. All share the
// hash tag {service}, so each script touches a single slot and dim runs
// unchanged on Redis Cluster.
//
//	<p>:nodes      HASH  the membership record, the one key a heartbeat
//	                     touches (see heartbeatScript). Per node n:
//	                     e:n lease expiry (server ms), s:n session (a
//	                     fresh number at every join), w:n weight (0 while
//	                     it drains, "pending" until its first heartbeat),
//	                     t:n the node TTL it declared (ms). For the service:
//	                     id, gen: run id of the Redis that wrote the record
//	                     and its generation (changes at every restore);
//	                     grace, why: server ms before which no claim is
//	                     granted, and why ("new": no record, "restored":
//	                     rolled back); maxttl: the largest node TTL declared
//	                     at the last join. dim before this layout kept the
//	                     leases in a sorted set here (see upgradeScript).
//	<p>:epoch      STRING the last leader epoch (fencing token)
//	<p>:leader     HASH  node, session, epoch of the current leader
//	<p>:forcing    STRING who is forcing out a dead leader (short TTL)
//	<p>:assign     HASH  key → node: the assignment
//	<p>:a:<node>   SET   the keys assigned to one node
//	<p>:traces     HASH  node → trace context of the last rebalance that
//	                     changed its keys
//	<p>:owner      HASH  key → "node session token generation [r<ms>]":
//	                     who runs it, and, while the key has no record in
//	                     state, what it does: creating since the claim (the
//	                     token, which is at least the server's time in µs
//	                     when it was minted, tells when), or, once the node
//	                     added the r field, running since <ms> (the node's
//	                     clock). A first start thus writes one entry per key
//	                     and rewrites it once, nothing else per key
//	<p>:fence      STRING the last token handed out
//	<p>:state      HASH  key → what the node that holds it says it does,
//	                     where its owner entry cannot say it (failing, hung,
//	                     unknown, stopping; running on a key the node does
//	                     not own): JSON {"n":node,"s":session,"st":state,…}.
//	                     A record outranks the owner entry
//	<p>:state:<st>:<node> SET the keys whose record the node's current
//	                     session published as st: mirrors of the state hash
//	                     that the summary counts without reading it
//	<p>:state:count HASH creating:<node>, running:<node> → how many keys of
//	                     the node's current session have no record and are
//	                     creating or running by their owner entry
//	<p>:state:moving SET keys whose state (the record, or else the owner
//	                     entry) comes from a node other than the one they are
//	                     assigned to (or that are unassigned)
//	<p>:cfgerr     HASH  node → its last failed getConfig, JSON {"e","t","k"}
//	<p>:avoid      HASH  key → "node=until_ms …": nodes that must not get the
//	                     key (until 0: until they say otherwise)
//	<p>:quarantine HASH  key → JSON {"u":until_ms,"l":level,…}: keys that
//	                     failed on every node they were given to
//	<p>:unhealthy  HASH  node → JSON {"u":until_ms,"l":level,"s":session,…}:
//	                     nodes on which keys fail that run elsewhere
//	<p>:outage     STRING JSON {"t":since_ms,"k":keys}: most keys fail everywhere
//	<p>:drains     HASH  node → until_ms: nodes an operator drained (they stay
//	                     members and get no keys until then)
//	<p>:freeze     STRING who froze the service, expiring with the freeze
//	<p>:restarting HASH  node → until_ms: stopped to restart; its keys wait
//	<p>:joinwait   HASH  node → until_ms: joined in a rollout; takes a leaver's keys
//	<p>:history    STREAM what happened: elections, joins, leaves, fences, moves,
//	                     claims, releases, verdicts (MAXLEN ~ WithHistory)
//	<p>:why        HASH  key → JSON {"t","f","o","r","g"}: its last move between
//	                     nodes and why (not a first placement)
//	<p>:handoffs   HASH  node → "prepared held": its make-before-break handoffs
//	                     in progress (instances prepared, keys held for their
//	                     new owner), while it has any
//	<p>:fleet      HASH  size: how many nodes the service had when the leader
//	                     last counted them; since: server ms when a node
//	                     joined a service with no live member (a restart)
//	<p>:labels     HASH  node → JSON {"l":{label:value},"k":max_keys,"c":max_cost}:
//	                     what WithLabels and WithCaps declared at its join
//	<p>:pins       HASH  key → node: an operator's pins (see Pin)
//	<p>:unplaceable STRING JSON {"n":count,"k":[first keys]}: keys no live
//	                     node may take at the leader's last rebalance
//	<p>:pclasses   HASH  number → JSON {"r":{label:value},"s":spread,"g":group,"c":cost}:
//	                     the distinct per-key placements (WithPlacement) the
//	                     leader balanced with, for Plan and Explain
//	<p>:placing    HASH  key → a number of pclasses: the placement of each key
//	                     that has one other than the zero value (written by
//	                     difference, when the placements change; see placing.go)
//	<p>:lock:…     rueidislock's leader lock
//	<p>:events     the service's pub/sub channel
//
// where <p> is "dim:{service}", after the optional WithKeyPrefix.
type keyspace struct {
	prefix     string
	nodes      string
	epoch      string
	leader     string
	forcing    string
	assign     string
	traces     string
	owner      string
	fence      string
	state      string
	cfgErr     string
	avoid      string
	quarantine string
	unhealthy  string
	outage     string
	drains     string
	freeze     string
	restarting string
	joinWait   string
	handoffs   string
	why        string
	history    string
	fleet      string
	labels     string
	pins       string
	unplace    string
	pclasses   string
	placing    string
	lock       string
	channel    string
}

func newKeyspace(keyPrefix, service string) keyspace {
	p := keyPrefix + "dim:{" + service + "}"
	return keyspace{
		prefix:     p,
		nodes:      p + ":nodes",
		epoch:      p + ":epoch",
		leader:     p + ":leader",
		forcing:    p + ":forcing",
		assign:     p + ":assign",
		traces:     p + ":traces",
		owner:      p + ":owner",
		fence:      p + ":fence",
		state:      p + ":state",
		cfgErr:     p + ":cfgerr",
		avoid:      p + ":avoid",
		quarantine: p + ":quarantine",
		unhealthy:  p + ":unhealthy",
		outage:     p + ":outage",
		drains:     p + ":drains",
		freeze:     p + ":freeze",
		restarting: p + ":restarting",
		joinWait:   p + ":joinwait",
		handoffs:   p + ":handoffs",
		why:        p + ":why",
		history:    p + ":history",
		labels:     p + ":labels",
		pins:       p + ":pins",
		unplace:    p + ":unplaceable",
		pclasses:   p + ":pclasses",
		placing:    p + ":placing",
		lock:       p + ":lock",
		fleet:      p + ":fleet",
		channel:    p + ":events",
	}
}

// assigned is the set of keys assigned to node.
func (k keyspace) assigned(node string) string { return k.prefix + ":a:" + node }

// inState is the set of keys whose record node published as st (see
// change).
func (k keyspace) inState(st KeyState, node string) string {
	return k.state + ":" + string(st) + ":" + node
}

// moving is the set of keys whose state comes from a node other than the
// one they are assigned to.
func (k keyspace) moving() string { return k.state + ":moving" }

// counts is the hash of the per-node counts of keys whose owner entry is
// their state (see keyspace).
func (k keyspace) counts() string { return k.state + ":count" }

// legacyKeys are the keys of the layout before the membership record (see
// keyspace), which upgradeScript folds into it: sessions weights ttls maxttl
// origin graceperiod.
func (k keyspace) legacyKeys() []string {
	return []string{k.prefix + ":sessions", k.prefix + ":weights", k.prefix + ":ttls", k.prefix + ":maxttl",
		k.prefix + ":origin", k.prefix + ":graceperiod"}
}
