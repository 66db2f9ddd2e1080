package dim

// Every Lua script dim runs lives in this file, and every one of them is
// built by script or keepScript, so that each starts with the shared prelude
// (luaPrelude): the server's clock in now, and the helpers that keep the
// membership record and the mirrors of key states consistent. The Go side of
// each script — its key order, its arguments and the parsing of its reply —
// is one method of store (store.go).

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/redis/rueidis"
)

// Events on the service channel: a verb and space-separated arguments. Node
// IDs contain no spaces (see namePattern).
const (
	evJoin       = "join"       // node
	evDrain      = "drain"      // node: stopping, move its keys away
	evLeave      = "leave"      // node...
	evLeader     = "leader"     // node epoch
	evAssign     = "assign"     // epoch node...: these nodes' keys changed
	evRelease    = "release"    // node: it let some keys go
	evConfig     = "config"     // the configs changed
	evRebalance  = "rebalance"  // [id]: someone asks the leader to rebalance
	evRebalanced = "rebalanced" // id epoch moves ok|error [message]: the leader's answer
	evAvoid      = "avoid"      // node: it cannot run some keys; place them elsewhere
	evPrepared   = "prepared"   // node key…: it prepared these keys (base64url); their old owner lets them go
)

func parseEvent(msg string) (verb string, args []string) {
	f := strings.Fields(msg)
	if len(f) == 0 {
		return "", nil
	}
	return f[0], f[1:]
}

// A Redis out of memory under the noeviction policy refuses every write that
// could grow memory, and without script flags it refuses a script at its
// first write. What keeps a running instance alive — renewing a lease,
// re-asserting an ownership, publishing a state, releasing, leaving —
// needs no new memory, so those scripts carry flags=allow-oom: a full
// Redis stops what is new (claims, the leader's moves and elections), never
// what runs.

// oomFlag lets a script run while Redis is out of memory (Redis 7 script
// flags).
const oomFlag = "#!lua flags=allow-oom\n"

// keepLua is a script that keeps or frees memory. It runs with
// flags=allow-oom on servers that know script flags, and plain on those that
// do not (the embedded test server).
type keepLua struct {
	flagged, plain *rueidis.Lua
}

// keepScript is script for what must run in a full Redis.
func keepScript(body string) *keepLua {
	return &keepLua{flagged: rueidis.NewLuaScript(oomFlag + luaPrelude + body), plain: script(body)}
}

// Exec runs the script; plain records that the server does not compile
// flagged scripts, so that it is asked once per client.
func (s *keepLua) Exec(ctx context.Context, c rueidis.Client, plain *atomic.Bool, keys, args []string) rueidis.RedisResult {
	if plain.Load() {
		return s.plain.Exec(ctx, c, keys, args)
	}
	r := s.flagged.Exec(ctx, c, keys, args)
	if err := r.Error(); err != nil && strings.Contains(err.Error(), "Error compiling script") {
		plain.Store(true)
		return s.plain.Exec(ctx, c, keys, args)
	}
	return r
}

// Every script reads the clock with TIME, so leases never depend on a
// client's clock. nextToken makes counters that only grow, even across a
// restart of Redis that loses them: a new value is at least the server time
// in microseconds (exact in Lua's doubles until the year 2255).
//
// trust guards every script that renews, joins or grants: it compares the
// server that runs the script (its run id, new at every start, and so also
// different on a promoted replica) with the one recorded as having written
// the service's record (the membership record at nodes). On a Redis
// Cluster the record also names the cluster node that wrote it: a record
// found on a master that imports the service's slot from that node was
// moved there by MIGRATE during a resharding (an exact copy) and is
// adopted as it is. A record that is absent ("new": a first
// start, or a Redis that lost everything) or was written by another server
// ("restored": a restart from RDB or AOF, a failover) cannot be trusted:
// nodes that Redis forgot may still run instances, so no claim is granted
// for the largest node TTL anyone declared, and the record gets a new
// generation, which tells every node to check that it still owns what it
// runs. A server that gives no ids (an embedded test server) leaves trust to
// the older rule in joinScript. With WithDurableRedis, a record written by
// another server is trusted as it is.
//
// A key's state is its record in the state hash or, without one, what its
// owner entry says (creating or running; see keyspace). Every script that
// changes either tells change, and applyTrack keeps the mirrors the summary
// reads exact in bulk: per node and state, the set of keys whose record the
// node published in that state; per node, the counts of keys whose owner
// entry of its current session is their state; and the set of keys whose
// state comes from a node other than the one they are assigned to. A node's
// sets and counts are dropped (dropStates) when its session ends, joins
// anew or expires, with UNLINK: a set of a node that ran a million keys is
// freed outside the script, which stays bounded; the entries of its old
// sessions stay in the hashes, stale, until they are overwritten or
// removed. Scripts that a full Redis must refuse (those without allow-oom)
// touch the mirrors only after their first write that needs memory: Redis
// checks memory at a script's first write only, and SREM or DEL would let
// the rest through.
const luaPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(v) return string.format('%.0f', v) end
local function nextToken(key)
  local v = math.max(tonumber(redis.call('GET', key) or '0') + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  local s = fmt(v)
  redis.call('SET', key, s)
  return s
end
-- counter returns the decimal strings of n + 1, n + 2, …, each in two
-- parts to be concatenated (all but the last three digits, and those): one
-- string.format per thousand values instead of one per value, and no
-- string of its own per value (a claim mints a token per key and writes
-- it into the key's owner entry).
local function counter(n)
  local hi = math.floor(n / 1000)
  local lo = n - hi * 1000
  local prefix = fmt(hi)
  return function()
    lo = lo + 1
    if lo == 1000 then
      hi, lo = hi + 1, 0
      prefix = fmt(hi)
    end
    if hi == 0 then return '', fmt(lo) end
    return prefix, string.char(48 + math.floor(lo / 100), 48 + math.floor(lo / 10) % 10, 48 + lo % 10)
  end
end
local function info(section, field)
  local s = redis.pcall('INFO', section)
  if type(s) == 'table' then
    if s.err and (string.find(s.err, 'NOPERM', 1, true) or string.find(s.err, "can't run", 1, true)) then error(s) end
    return nil
  end
  return string.match(s, field .. ':(%x+)')
end
local function serverID()
  return info('server', 'run_id')
end
local function live(rec, node, session)
  local v = redis.call('HMGET', rec, 'e:' .. node, 's:' .. node)
  return (tonumber(v[1]) or 0) > now and v[2] == session
end
local function requireRecord(rec)
  if type(redis.pcall('HLEN', rec)) ~= 'number' then
    error({err = 'DIMLAYOUT ' .. rec .. ' is not the membership hash this dim version keeps: an older dim runs the service, or the key is not dim\'s'})
  end
end
local function members(rec)
  local all = redis.call('HGETALL', rec)
  local ids, by = {}, {}
  for i = 1, #all, 2 do
    local f, id = string.match(all[i], '^([eswt]):(.+)$')
    if f then
      if not by[id] then
        by[id] = {}
        ids[#ids + 1] = id
      end
      by[id][f] = all[i + 1]
    end
  end
  table.sort(ids)
  return ids, by
end
local function liveMembers(rec)
  local ids, by = members(rec)
  local out = {}
  for _, id in ipairs(ids) do
    if (tonumber(by[id].e or '') or 0) > now then out[#out + 1] = id end
  end
  return out, by
end
local function forget(rec, node)
  redis.call('HDEL', rec, 'e:' .. node, 's:' .. node, 'w:' .. node, 't:' .. node)
end
local function largestTTL(rec, floor)
  local m = math.max(floor, tonumber(redis.call('HGET', rec, 'maxttl') or '0') or 0)
  local ids, by = members(rec)
  for _, id in ipairs(ids) do m = math.max(m, tonumber(by[id].t or '0') or 0) end
  return m
end
local function startGrace(rec, untilMs, why)
  if (tonumber(redis.call('HGET', rec, 'grace') or '0') or 0) < untilMs then
    redis.call('HSET', rec, 'grace', fmt(untilMs), 'why', why)
  end
end
local function graceLeft(rec)
  return math.max(0, (tonumber(redis.call('HGET', rec, 'grace') or '0') or 0) - now)
end
local function clusterSelf()
  if info('cluster', 'cluster_enabled') ~= '1' then return nil, nil end
  local s = redis.pcall('CLUSTER', 'NODES')
  if type(s) == 'table' then
    if s.err and string.find(s.err, 'NOPERM', 1, true) then error(s) end
    return nil, nil
  end
  for line in string.gmatch(s, '[^\n]+') do
    if string.find(line, 'myself', 1, true) then return string.match(line, '^(%x+)'), line end
  end
  return nil, nil
end
local function trust(rec, floor, durable)
  local id = serverID()
  if not id then return '', false end
  local cur = redis.call('HMGET', rec, 'id', 'gen', 'node')
  if cur[1] == id and cur[2] then return cur[2], true end
  if cur[1] and cur[2] and durable == '1' then
    -- Trusted as it is, but not adopted: a node without WithDurableRedis
    -- still sees a record another server wrote.
    return cur[2], true
  end
  local me, line = clusterSelf()
  if cur[1] and cur[2] and cur[3] and line then
    local importing = '[' .. redis.call('CLUSTER', 'KEYSLOT', rec) .. '-<-' .. cur[3] .. ']'
    if string.find(line, importing, 1, true) then
      -- Moved here by MIGRATE from the master that wrote it, while this
      -- one imports the slot: an exact copy, adopted as it is.
      redis.call('HSET', rec, 'id', id, 'node', me)
      return cur[2], true
    end
  end
  local why = 'new'
  if cur[1] then why = 'restored' end
  startGrace(rec, now + largestTTL(rec, floor), why)
  local gen = fmt(tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('HSET', rec, 'id', id, 'gen', gen)
  if me then redis.call('HSET', rec, 'node', me) else redis.call('HDEL', rec, 'node') end
  return gen, true
end
local keyStates = {'running', 'failing', 'hung', 'unknown', 'stopping', 'creating'}
local mirrored = {}
for _, s in ipairs(keyStates) do mirrored[s] = true end
-- A chunk's values repeat (a node writes one record for all the keys it
-- publishes in one state at once), so each is parsed once per call.
local records = {}
local function recordOf(v)
  if not v then return nil, nil end
  local r = records[v]
  if not r then
    local n, st = string.match(v, '^{"n":"([^"]*)","s":"[^"]*","st":"([^"]*)"')
    r = {n or false, st or false}
    records[v] = r
  end
  return r[1] or nil, r[2] or nil
end
local setNames = {}
local function byState(state, st, node)
  local byNode = setNames[node]
  if not byNode then
    byNode = {}
    setNames[node] = byNode
  end
  local s = byNode[st]
  if not s then
    -- state is the service's state hash: one per call
    s = state .. ':' .. st .. ':' .. node
    byNode[st] = s
  end
  return s
end
local function hasPrefix(s, p) return type(s) == 'string' and string.find(s, p, 1, true) == 1 end
local function bulk(cmd, key, list)
  for i = 1, #list, 1000 do redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list))) end
end
local function push(lists, name, key)
  local l = lists[name]
  if not l then
    l = {}
    lists[name] = l
  end
  l[#l + 1] = key
end
-- An owner entry without a record says what its key does: creating, or
-- running once its node added the r field (see keyspace).
local function implicitOf(own)
  if string.find(own, ' r', 1, true) then return 'running' end
  return 'creating'
end
-- effective is the node whose word a key's state is: its record's, or,
-- without one, its owner's.
local function effective(rec, own)
  if rec then return (recordOf(rec)) end
  if own then return (string.match(own, '^(%S+) ')) end
  return nil
end
-- A track gathers what changes of records and owner entries do to the
-- mirrors, and applies it in bulk (applyTrack): the sets of recorded
-- states, the counters of implicit states and the moving set.
local function newTrack(state, nodes)
  return {state = state, nodes = nodes, rem = {}, add = {}, moving = {}, still = {}, unsure = {}, unsureNode = {},
    delta = {}, sessions = {}}
end
-- countImplicit counts an owner entry without a record into its node's
-- counter (d = 1) or out of it (d = -1), if it is of the node's current
-- session: a counter is dropped with its session (see dropStates).
local function countImplicit(tr, own, d)
  local n, s = string.match(own, '^(%S+) (%S+) ')
  if not n then return end
  local cur = tr.sessions[n]
  if cur == nil then
    cur = redis.call('HGET', tr.nodes, 's:' .. n) or false
    tr.sessions[n] = cur
  end
  if cur ~= s then return end
  local f = implicitOf(own) .. ':' .. n
  tr.delta[f] = (tr.delta[f] or 0) + d
end
-- change records that key's record went from rec0 to rec1 and its owner
-- entry from own0 to own1; asg is the node it is assigned to (false for
-- none, nil if unknown: read in applyTrack when it matters).
local function change(tr, key, rec0, own0, rec1, own1, asg)
  if rec0 ~= rec1 then
    local n, st = recordOf(rec0)
    if n and mirrored[st] then push(tr.rem, byState(tr.state, st, n), key) end
    n, st = recordOf(rec1)
    if n and mirrored[st] then push(tr.add, byState(tr.state, st, n), key) end
  end
  if own0 ~= own1 or rec0 ~= rec1 then
    if own0 and not rec0 then countImplicit(tr, own0, -1) end
    if own1 and not rec1 then countImplicit(tr, own1, 1) end
  end
  local n0, n1 = effective(rec0, own0), effective(rec1, own1)
  if n0 == n1 then return end
  if not n1 then
    tr.still[#tr.still + 1] = key
  elseif asg == nil then
    tr.unsure[#tr.unsure + 1] = key
    tr.unsureNode[#tr.unsureNode + 1] = n1
  elseif n1 ~= asg then
    tr.moving[#tr.moving + 1] = key
  else
    tr.still[#tr.still + 1] = key
  end
end
local function countsOf(state) return state .. ':count' end
local function applyTrack(tr, assign)
  for set, list in pairs(tr.rem) do bulk('SREM', set, list) end
  for set, list in pairs(tr.add) do bulk('SADD', set, list) end
  for i = 1, #tr.unsure, 1000 do
    local to = math.min(i + 999, #tr.unsure)
    local a = redis.call('HMGET', assign, unpack(tr.unsure, i, to))
    for j = i, to do
      if a[j - i + 1] ~= tr.unsureNode[j] then
        tr.moving[#tr.moving + 1] = tr.unsure[j]
      else
        tr.still[#tr.still + 1] = tr.unsure[j]
      end
    end
  end
  bulk('SADD', tr.state .. ':moving', tr.moving)
  bulk('SREM', tr.state .. ':moving', tr.still)
  local fields = {}
  for f, d in pairs(tr.delta) do
    if d ~= 0 then fields[#fields + 1] = f end
  end
  if #fields > 0 then
    local cur = redis.call('HMGET', countsOf(tr.state), unpack(fields))
    local set = {}
    for j, f in ipairs(fields) do
      set[#set + 1] = f
      set[#set + 1] = (tonumber(cur[j]) or 0) + tr.delta[f]
    end
    redis.call('HSET', countsOf(tr.state), unpack(set))
  end
end
local function dropStates(state, node)
  for _, s in ipairs(keyStates) do redis.call('UNLINK', byState(state, s, node)) end
  redis.call('HDEL', countsOf(state), 'creating:' .. node, 'running:' .. node)
end
`

func script(body string) *rueidis.Lua { return rueidis.NewLuaScript(luaPrelude + body) }

// upgradeScript turns the record of the layout before this one (a sorted
// set of leases at nodes, with sessions, weights, TTLs, origin and grace in
// keys of their own) into the membership record, keeping the origin, the
// grace period and the largest TTL. It refuses while a node of that layout
// holds a live lease: such a node is an older dim that does not read the
// record, so the two would not see each other's leases. Once converted, an
// older dim's scripts fail on the record's type and it cannot join.
//
// KEYS: nodes, then legacyKeys
// Returns 1 (converted, or nothing to convert), -1 (a node of the older
// layout is live), -2 (the key holds something dim did not write).
var upgradeScript = script(`
if type(redis.pcall('HLEN', KEYS[1])) == 'number' then return 1 end
local alive = redis.pcall('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, 1)
if type(alive) ~= 'table' or alive.err then return -2 end
if #alive > 0 then return -1 end
local o = redis.call('HMGET', KEYS[6], 'id', 'gen')
local g = redis.call('HMGET', KEYS[7], 'until', 'why')
local maxttl = redis.call('GET', KEYS[5])
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
local rec = {}
if o[1] and o[2] then
  rec[#rec + 1] = 'id'
  rec[#rec + 1] = o[1]
  rec[#rec + 1] = 'gen'
  rec[#rec + 1] = o[2]
end
if g[1] then
  rec[#rec + 1] = 'grace'
  rec[#rec + 1] = g[1]
  rec[#rec + 1] = 'why'
  rec[#rec + 1] = g[2] or 'new'
end
if maxttl then
  rec[#rec + 1] = 'maxttl'
  rec[#rec + 1] = maxttl
end
if #rec > 0 then redis.call('HSET', KEYS[1], unpack(rec)) end
return 1
`)

// joinScript registers a node with a fresh session, as pending: the leader
// gives it keys only after its first heartbeat proves that it received the
// session, so a node whose replies are lost (a one-way partition) can hold a
// membership but never work.
//
// A session of the same node that is still live is never replaced: that is
// either another process with the same ID, or this node's own earlier
// session, whose claims must stay valid until its lease ends. The caller
// waits and tries again.
//
// Where the server gives no ids to check the record with (see trust), a join
// into a service with no live member starts a grace period, as the only sign
// left that Redis may have lost the state of nodes that still run instances.
// With ids, a service whose record is intact needs none: every node that
// could run anything holds a live lease in it.
//
// The node's TTL is recorded, and the stored maximum becomes the largest TTL
// of the live members: the grace after a restore covers the longest lease.
// A join into a service with no live member marks a restart of the service
// in fleet, for the leader's join window (see settleJoins).
//
// The state sets of an earlier session of the node are dropped: its
// published states are stale.
//
// KEYS: nodes fence fleet state
// ARGV: node ttl_ms floor_ms (the largest TTL this node has seen) durable
// Returns {session, server_ms, grace_left_ms, generation, max_ttl_ms}, or
// {"", server_ms, wait_ms, "", 0} while a live session holds the ID, or
// {"", server_ms, 0, "", -1} when nodes is not a hash (see upgradeScript).
var joinScript = script(`
if type(redis.pcall('HLEN', KEYS[1])) ~= 'number' then return {'', now, 0, '', -1} end
local node, ttl, floor = ARGV[1], tonumber(ARGV[2]), math.max(tonumber(ARGV[2]), tonumber(ARGV[3]))
local cur = redis.call('HMGET', KEYS[1], 'e:' .. node, 's:' .. node)
local score = tonumber(cur[1]) or 0
if score > now and cur[2] then
  return {'', now, score - now, '', 0}
end
local gen, known = trust(KEYS[1], floor, ARGV[4])
if #liveMembers(KEYS[1]) == 0 then
  redis.call('HSET', KEYS[3], 'since', now)
  if not known then
    startGrace(KEYS[1], now + largestTTL(KEYS[1], floor), 'new')
  end
end
local session = nextToken(KEYS[2])
dropStates(KEYS[4], node)
redis.call('HSET', KEYS[1], 'e:' .. node, now + ttl, 's:' .. node, session, 'w:' .. node, 'pending', 't:' .. node, ttl)
local m = ttl
local alive, by = liveMembers(KEYS[1])
for _, n in ipairs(alive) do m = math.max(m, tonumber(by[n].t or '0') or 0) end
redis.call('HSET', KEYS[1], 'maxttl', m)
return {session, now, graceLeft(KEYS[1]), gen, m}
`)

// heartbeatScript renews a lease; the first renewal of a session confirms
// the join and announces it. A node whose lease has passed or whose session
// was replaced is told so (0) and must fence itself: others may already run
// its keys. The record's generation tells the node when Redis restored an
// older record (see trust), and the stored maximum TTL lets every node know
// the longest lease in the service.
//
// It reads and writes the membership record only: a single key, which
// Redis Cluster serves (following ASK) at every step of a migration of the
// service's slot, when every script with more than one key gets TRYAGAIN
// until the slot is whole again. The restore check (trust) and the first
// renewal's confirmation live in the same record for that reason.
//
// KEYS: nodes
// ARGV: node session ttl_ms weight channel floor_ms durable
// Returns {1 or 0, server_ms, generation, max_ttl_ms}.
var heartbeatScript = keepScript(`
local gen = trust(KEYS[1], math.max(tonumber(ARGV[3]), tonumber(ARGV[6])), ARGV[7])
local maxttl = tonumber(redis.call('HGET', KEYS[1], 'maxttl') or '0') or 0
if not live(KEYS[1], ARGV[1], ARGV[2]) then
  return {0, now, gen, maxttl}
end
redis.call('HSET', KEYS[1], 'e:' .. ARGV[1], now + tonumber(ARGV[3]))
if redis.call('HGET', KEYS[1], 'w:' .. ARGV[1]) == 'pending' then
  redis.call('HSET', KEYS[1], 'w:' .. ARGV[1], ARGV[4])
  redis.call('PUBLISH', ARGV[5], 'join ' .. ARGV[1])
end
return {1, now, gen, maxttl}
`)

// verifyScript makes the record say again what a node's session holds,
// after a restore: for every key the node runs, or has a create or
// disconnect call in flight for, it claimed the key in the history Redis
// lost and nobody else runs it (at most one did, before). Each such entry is
// stamped with the record's current generation, re-asserted with a fresh
// token if the restored record names another owner. A key that another node
// already confirmed under this generation is listed instead, for the node to
// stop at once; that cannot happen while every node keeps to its lease. An
// entry left unconfirmed when the grace period ends is free to claim. An
// entry of the node keeps what it says of its key (see keyspace); a re-asserted
// one says creating, until the node publishes its keys' states again.
//
// KEYS: owner nodes fence state assign
// ARGV: node session key…
// Returns {the keys confirmed by another node, the keys written}.
var verifyScript = keepScript(`
local gen = redis.call('HGET', KEYS[2], 'gen') or '-'
local mine = ARGV[1] .. ' ' .. ARGV[2] .. ' '
local lost, wrote = {}, {}
local tr = newTrack(KEYS[4], KEYS[2])
for i = 3, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and hasPrefix(cur, mine) then
    local token, tail = string.match(cur, '^%S+ %S+ (%S+) ?%S*(.*)$')
    redis.call('HSET', KEYS[1], ARGV[i], mine .. token .. ' ' .. gen .. tail)
    wrote[#wrote + 1] = ARGV[i]
  elseif cur and string.match(cur, '^%S+ %S+ %S+ (%S+)') == gen then
    lost[#lost + 1] = ARGV[i]
  else
    local own = mine .. nextToken(KEYS[3]) .. ' ' .. gen
    redis.call('HSET', KEYS[1], ARGV[i], own)
    wrote[#wrote + 1] = ARGV[i]
    local rec = redis.call('HGET', KEYS[4], ARGV[i])
    change(tr, ARGV[i], rec, cur, rec, own, nil)
  end
end
applyTrack(tr, KEYS[5])
return {lost, wrote}
`)

// drainScript marks a stopping node: the leader gives its keys to others
// while it keeps its lease until it has let every instance go.
//
// KEYS: nodes
// ARGV: node session channel
var drainScript = keepScript(`
if not live(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'w:' .. ARGV[1], 0)
redis.call('PUBLISH', ARGV[3], 'drain ' .. ARGV[1])
return 1
`)

// leaveScript ends a node's membership if its session is still current.
//
// KEYS: nodes cfgerr traces state handoffs labels
// ARGV: node session channel
var leaveScript = keepScript(`
if redis.call('HGET', KEYS[1], 's:' .. ARGV[1]) ~= ARGV[2] then return 0 end
forget(KEYS[1], ARGV[1])
for i = 2, 3 do redis.call('HDEL', KEYS[i], ARGV[1]) end
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
dropStates(KEYS[4], ARGV[1])
redis.call('PUBLISH', ARGV[3], 'leave ' .. ARGV[1])
return 1
`)

// membersScript drops expired members (announcing them as left) and lists
// the live ones.
//
// KEYS: nodes cfgerr traces state handoffs labels
// ARGV: channel
// Returns {server_ms, node, expiry_ms, weight, labels, node, …}, labels
// as the labels hash holds them ("" for none).
var membersScript = keepScript(`
local ids, by = members(KEYS[1])
local dead, out = {}, {now}
for _, n in ipairs(ids) do
  local e = tonumber(by[n].e or '') or 0
  if e <= now then
    dead[#dead + 1] = n
    forget(KEYS[1], n)
    for i = 2, 3 do redis.call('HDEL', KEYS[i], n) end
    redis.call('HDEL', KEYS[5], n)
    redis.call('HDEL', KEYS[6], n)
    dropStates(KEYS[4], n)
  else
    out[#out + 1] = n
    out[#out + 1] = e
    out[#out + 1] = tonumber(by[n].w or '0') or 0
    out[#out + 1] = redis.call('HGET', KEYS[6], n) or ''
  end
end
if #dead > 0 then
  redis.call('PUBLISH', ARGV[1], 'leave ' .. table.concat(dead, ' '))
end
return out
`)

// pinScript pins a key to a live node, or refuses (0) a node that is not
// live, and asks the leader to rebalance.
//
// KEYS: nodes pins
// ARGV: key node channel
var pinScript = script(`
if (tonumber(redis.call('HGET', KEYS[1], 'e:' .. ARGV[2]) or '') or 0) <= now then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'rebalance')
return 1
`)

// unpinScript removes a key's pin, if it has one, and asks the leader to
// rebalance; it returns whether there was one.
//
// KEYS: pins
// ARGV: key channel
var unpinScript = script(`
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[2], 'rebalance')
return 1
`)

// fleetScript tells the leader how many nodes have joined and confirmed
// (weight above 0), how many the service had when it last counted them, and
// how long ago the service restarted.
//
// KEYS: nodes fleet
// Returns {confirmed live nodes, fleet size (0: never counted), ms since the
// last restart (-1: none recorded)}.
var fleetScript = script(`
local n = 0
local alive, by = liveMembers(KEYS[1])
for _, node in ipairs(alive) do
  if (tonumber(by[node].w or '0') or 0) > 0 then n = n + 1 end
end
local f = redis.call('HMGET', KEYS[2], 'size', 'since')
local since = -1
if f[2] then since = now - tonumber(f[2]) end
return {n, tonumber(f[1] or '0') or 0, since}
`)

// fleetSizeScript records the service's size: only a larger one, unless
// forced.
//
// KEYS: fleet
// ARGV: size force ("1" or "0")
// Returns the size recorded.
var fleetSizeScript = script(`
local cur = tonumber(redis.call('HGET', KEYS[1], 'size') or '0') or 0
local n = tonumber(ARGV[1])
if ARGV[2] == '1' or n > cur then
  redis.call('HSET', KEYS[1], 'size', n)
  return n
end
return cur
`)

// leadScript records a new leader after it won the lock, with a new epoch.
// Only a live member may lead.
//
// KEYS: nodes epoch leader
// ARGV: node session channel
// Returns the epoch, or 0 if the node is not live.
var leadScript = script(`
if not live(KEYS[1], ARGV[1], ARGV[2]) then return '0' end
local epoch = nextToken(KEYS[2])
redis.call('HSET', KEYS[3], 'node', ARGV[1], 'session', ARGV[2], 'epoch', epoch)
redis.call('PUBLISH', ARGV[3], 'leader ' .. ARGV[1] .. ' ' .. epoch)
return epoch
`)

// leaderScript reports the recorded leader and whether it is a live member.
//
// KEYS: nodes leader
// Returns {node, epoch, 1 if live else 0}; node is "" when there is none.
var leaderScript = script(`
local l = redis.call('HMGET', KEYS[2], 'node', 'session', 'epoch')
if not l[1] then return {'', '0', 0} end
local ok = 0
if live(KEYS[1], l[1], l[2]) then ok = 1 end
return {l[1], l[3], ok}
`)

// writeScript applies a diff of the assignment, but only for the current
// epoch, so a deposed leader can never write. It tells every node whose set
// changed, and leaves the rebalance's trace context ("-" if none) for each of
// them, so that the reconcile that acts on the change can link to it. A key
// that leaves the configs while its owner is dead takes its owner entry and
// state with it; a live owner releases them itself when it has stopped. The
// set of keys whose state comes from another node than the one they are
// assigned to follows every change (see change): a key that was not
// assigned is in it if it has any state, so that a first placement reads
// nothing per key while that set is empty.
//
// KEYS: epoch assign traces nodes owner state, then set_1 … set_m
// (the per-node sets involved)
// ARGV: epoch channel traceparent m node_1 … node_m tell_1 … tell_m then
// groups (new, old, count, key_1 … key_count): count keys that go from
// node old to node new (numbering the nodes, 0: none); tell_i is "1" if node
// i is to be told now (its last chunk of a write).
// Returns 1, or 0 if the epoch is stale.
var writeScript = script(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local m = tonumber(ARGV[4])
local adds, rems, sets, dels, look, lookTo = {}, {}, {}, {}, {}, {}
local scan = redis.call('SCARD', KEYS[6] .. ':moving') > 0
local i = 5 + 2 * m
while i <= #ARGV do
  local new, old, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local from, to = i + 3, i + 2 + n
  if old > 0 then
    local r = rems[old] or {}
    rems[old] = r
    for j = from, to do r[#r + 1] = ARGV[j] end
  end
  if new > 0 then
    local a = adds[new] or {}
    adds[new] = a
    local node = ARGV[4 + new]
    local k = #sets
    for j = from, to do
      local key = ARGV[j]
      a[#a + 1] = key
      sets[k + 1] = key
      sets[k + 2] = node
      k = k + 2
      if old > 0 or scan then
        look[#look + 1] = key
        lookTo[#lookTo + 1] = node
      end
    end
  else
    for j = from, to do dels[#dels + 1] = ARGV[j] end
  end
  i = to + 1
end
local notify = {}
for i = 1, m do
  if rems[i] then bulk('SREM', KEYS[6 + i], rems[i]) end
  if adds[i] then bulk('SADD', KEYS[6 + i], adds[i]) end
  if (rems[i] or adds[i]) and ARGV[4 + m + i] == '1' then
    notify[#notify + 1] = ARGV[4 + i]
    if ARGV[3] ~= '-' then redis.call('HSET', KEYS[3], ARGV[4 + i], ARGV[3]) end
  end
end
bulk('HSET', KEYS[2], sets)
bulk('HDEL', KEYS[2], dels)
local tr = newTrack(KEYS[6], KEYS[4])
for i = 1, #look, 1000 do
  local to = math.min(i + 999, #look)
  local recs = redis.call('HMGET', KEYS[6], unpack(look, i, to))
  local owns = redis.call('HMGET', KEYS[5], unpack(look, i, to))
  for j = i, to do
    local n = effective(recs[j - i + 1], owns[j - i + 1])
    if n and n ~= lookTo[j] then
      tr.moving[#tr.moving + 1] = look[j]
    elseif n then
      tr.still[#tr.still + 1] = look[j]
    end
  end
end
local alive, gone = {}, {}
for i = 1, #dels, 1000 do
  local to = math.min(i + 999, #dels)
  local owns = redis.call('HMGET', KEYS[5], unpack(dels, i, to))
  local recs = redis.call('HMGET', KEYS[6], unpack(dels, i, to))
  for j = i, to do
    local key, cur, rec = dels[j], owns[j - i + 1], recs[j - i + 1]
    local dead = false
    if cur then
      local who = string.match(cur, '^(%S+ %S+) ')
      if alive[who] == nil then
        local on, os = string.match(cur, '^(%S+) (%S+) ')
        alive[who] = live(KEYS[4], on, os)
      end
      dead = not alive[who]
    end
    if dead then
      gone[#gone + 1] = key
      change(tr, key, rec, cur, nil, nil, false)
    elseif rec or cur then
      tr.moving[#tr.moving + 1] = key
    end
  end
end
bulk('HDEL', KEYS[5], gone)
bulk('HDEL', KEYS[6], gone)
applyTrack(tr, KEYS[2])
if #notify > 0 then
  redis.call('PUBLISH', ARGV[2], 'assign ' .. ARGV[1] .. ' ' .. table.concat(notify, ' '))
end
return 1
`)

// claimScript takes ownership of keys for a node, each only if it is
// assigned to the node and unowned, already the node's, owned by a node that
// is no longer live, or owned under an older generation of the record and not
// confirmed since (see verifyScript): after a restore, a claim that its owner
// did not confirm within the grace period is not running anywhere. Every
// grant mints a new token, larger than any before it, even for a key the
// node already owns: a token is never handed out twice, whatever older record
// Redis comes back with.
//
// An owner entry is "node session token generation": a granted key has no
// record in the state hash (any it had goes), so its owner entry says it is
// creating, since the claim (see keyspace); the node's counter of such keys,
// which the summary reads, follows in bulk (see change).
//
// KEYS: nodes assign owner fence state
// ARGV: node session floor_ms durable key…
// Returns {status, wait_ms, first_token, code per key}: status 1 ok, -1 the
// node itself is not live, -2 the grace period runs for wait_ms more; a
// code of "+" means granted (the granted keys have the tokens first_token,
// first_token + 1, … in their order), "0" that the key is not assigned to
// the node, "-" that another live node holds it.
var claimScript = script(`
local node, session = ARGV[1], ARGV[2]
local gen = trust(KEYS[1], tonumber(ARGV[3]), ARGV[4])
if gen == '' then gen = '-' end
if not live(KEYS[1], node, session) then return {-1, 0} end
local left = graceLeft(KEYS[1])
if left > 0 then return {-2, left} end
if #ARGV < 5 then return {1, 0, '0'} end
local mine = node .. ' ' .. session .. ' '
local suffix = ' ' .. gen
local last = math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), tonumber(t[1]) * 1000000 + tonumber(t[2]) - 1)
local out = {1, 0, fmt(last + 1)}
local nextOf = counter(last)
local owners, grants, before, alive = {}, {}, {}, {}
local g = 0
local assigned = redis.call('HMGET', KEYS[2], unpack(ARGV, 5))
local current = redis.call('HMGET', KEYS[3], unpack(ARGV, 5))
for j = 1, #assigned do
  local code = '0'
  if assigned[j] == node then
    local cur = current[j]
    local free = true
    if cur and not hasPrefix(cur, mine) then
      local on, os, _, og = string.match(cur, '^(%S+) (%S+) (%S+) ?(%S*)')
      if og ~= '' and og ~= gen then
        free = true
      else
        local who = on .. ' ' .. os
        if alive[who] == nil then alive[who] = live(KEYS[1], on, os) or false end
        free = not alive[who]
      end
    end
    if not free then
      code = '-'
    else
      last = last + 1
      local hi, lo = nextOf()
      g = g + 1
      owners[2 * g - 1] = ARGV[4 + j]
      owners[2 * g] = mine .. hi .. lo .. suffix
      grants[g] = ARGV[4 + j]
      before[g] = cur or false
      code = '+'
    end
  end
  out[j + 3] = code
end
if g > 0 then
  -- The rest follows the first write that needs memory (the token), so
  -- that a full Redis refuses the claim before it writes anything.
  redis.call('SET', KEYS[4], fmt(last))
  -- Keys that run have no record: a first start finds the hash empty.
  local olds = {}
  if redis.call('HLEN', KEYS[5]) > 0 then olds = redis.call('HMGET', KEYS[5], unpack(grants)) end
  redis.call('HSET', KEYS[3], unpack(owners))
  local tr = newTrack(KEYS[5], KEYS[1])
  tr.sessions[node] = session
  local dels, fresh = {}, 0
  for j = 1, g do
    local rec, cur = olds[j], before[j] or nil
    if rec or cur then
      if rec then dels[#dels + 1] = grants[j] end
      change(tr, grants[j], rec, cur, nil, owners[2 * j], node)
    else
      fresh = fresh + 1
    end
  end
  tr.delta['creating:' .. node] = (tr.delta['creating:' .. node] or 0) + fresh
  bulk('HDEL', KEYS[5], dels)
  applyTrack(tr, KEYS[2])
end
return out
`)

// releaseScript gives up keys the node owns, with their published state,
// and tells waiting claimants.
//
// KEYS: owner state nodes assign
// ARGV: node session channel key…
var releaseScript = keepScript(`
local node, session = ARGV[1], ARGV[2]
local mine = node .. ' ' .. session .. ' '
local minestate = '{"n":"' .. node .. '","s":"' .. session .. '"'
local dels, sdels = {}, {}
local tr = newTrack(KEYS[2], KEYS[3])
local cs = redis.call('HGET', KEYS[3], 's:' .. node) or false
tr.sessions[node] = cs
local counted = {creating = 0, running = 0}
for from = 4, #ARGV, 1000 do
  local to = math.min(from + 999, #ARGV)
  local owners = redis.call('HMGET', KEYS[1], unpack(ARGV, from, to))
  local states = redis.call('HMGET', KEYS[2], unpack(ARGV, from, to))
  for j = 1, to - from + 1 do
    local key, cur, rec = ARGV[from + j - 1], owners[j], states[j]
    local owned, recorded = hasPrefix(cur, mine), hasPrefix(rec, minestate)
    if owned then dels[#dels + 1] = key end
    if recorded then sdels[#sdels + 1] = key end
    if owned and not rec then
      -- Its owner entry was its state: both go.
      local st = implicitOf(cur)
      counted[st] = counted[st] + 1
      tr.still[#tr.still + 1] = key
    elseif owned or recorded then
      local rec1, own1 = rec, cur
      if recorded then rec1 = nil end
      if owned then own1 = nil end
      change(tr, key, rec, cur, rec1, own1, nil)
    end
  end
end
if cs == session then
  for st, c in pairs(counted) do
    tr.delta[st .. ':' .. node] = (tr.delta[st .. ':' .. node] or 0) - c
  end
end
bulk('HDEL', KEYS[1], dels)
bulk('HDEL', KEYS[2], sdels)
applyTrack(tr, KEYS[4])
if #dels > 0 then redis.call('PUBLISH', ARGV[3], 'release ' .. ARGV[1]) end
return #dels
`)

// stateScript publishes what a node's keys are doing. Keys that run are
// listed first, with one time for all of them: on a key the node owns, that
// is its owner entry's r field (see keyspace), and any record the key had goes;
// on any other key, a record that says running. Then a record (JSON) per
// key, or "" to drop the node's own entry: without a record, the owner
// entry of a key the node owns says creating again. A node writes only
// keys that it owns, that nobody owns, or whose entry is already its own,
// and only while its session is live.
//
// KEYS: nodes owner state assign
// ARGV: node session since_ms n run_key_1 … run_key_n key value key value…
// Returns {1, refused key…}, or {0} if the session is not live.
var stateScript = keepScript(`
if not live(KEYS[1], ARGV[1], ARGV[2]) then return {0} end
local node, session = ARGV[1], ARGV[2]
local mine = node .. ' ' .. session .. ' '
local minestate = '{"n":"' .. node .. '","s":"' .. session .. '"'
local suffix = ' r' .. ARGV[3]
local nrun = tonumber(ARGV[4])
local out = {1}
local keys = {}
for i = 5, 4 + nrun do keys[i - 4] = ARGV[i] end
for i = 5 + nrun, #ARGV, 2 do keys[#keys + 1] = ARGV[i] end
if #keys == 0 then return out end
local owners = redis.call('HMGET', KEYS[2], unpack(keys))
local olds = {}
if redis.call('HLEN', KEYS[3]) > 0 then olds = redis.call('HMGET', KEYS[3], unpack(keys)) end
local tr = newTrack(KEYS[3], KEYS[1])
tr.sessions[node] = session
local oset, sset, sdel = {}, {}, {}
local running
local started = 0
for j = 1, #keys do
  local key, cur, rec = keys[j], owners[j], olds[j]
  local v
  if j <= nrun then
    if hasPrefix(cur, mine) then
      local at = string.find(cur, ' r', #mine, true)
      local own1
      if at then own1 = string.sub(cur, 1, at - 1) .. suffix else own1 = cur .. suffix end
      oset[#oset + 1] = key
      oset[#oset + 1] = own1
      if rec then
        sdel[#sdel + 1] = key
        change(tr, key, rec, cur, nil, own1, nil)
      elseif not at then
        started = started + 1
      end
    else
      running = running or ('{"n":"' .. node .. '","s":"' .. session .. '","st":"running","t":' .. ARGV[3] .. '}')
      v = running
    end
  else
    v = ARGV[4 + nrun + 2 * (j - nrun)]
  end
  if not v then
    -- done above
  elseif hasPrefix(cur, mine) then
    if v ~= '' then
      sset[#sset + 1] = key
      sset[#sset + 1] = v
      change(tr, key, rec, cur, v, cur, nil)
    else
      local own1 = cur
      local at = string.find(cur, ' r', #mine, true)
      if at then
        own1 = string.sub(cur, 1, at - 1)
        oset[#oset + 1] = key
        oset[#oset + 1] = own1
      end
      if rec then sdel[#sdel + 1] = key end
      change(tr, key, rec, cur, nil, own1, nil)
    end
  elseif v == '' then
    if hasPrefix(rec, minestate) then
      sdel[#sdel + 1] = key
      change(tr, key, rec, cur, nil, cur, nil)
    end
  elseif hasPrefix(rec, minestate) or not cur then
    sset[#sset + 1] = key
    sset[#sset + 1] = v
    change(tr, key, rec, cur, v, cur, nil)
  else
    out[#out + 1] = key
  end
end
bulk('HDEL', KEYS[3], sdel)
bulk('HSET', KEYS[3], sset)
bulk('HSET', KEYS[2], oset)
if started > 0 then
  tr.delta['creating:' .. node] = (tr.delta['creating:' .. node] or 0) - started
  tr.delta['running:' .. node] = (tr.delta['running:' .. node] or 0) + started
end
applyTrack(tr, KEYS[4])
return out
`)

// abdicateScript removes a leader's record when it hands off gracefully, if
// its epoch is still the current one.
//
// KEYS: epoch leader
// ARGV: epoch
var abdicateScript = keepScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], 'node', 'session')
return 1
`)

// resultScript records the outcome of the leader's last rebalance, for
// Status and probes, if the epoch is still the leader's.
//
// KEYS: epoch leader
// ARGV: epoch moves error pending in_flight budget
var resultScript = keepScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'rb_at', now, 'rb_moves', ARGV[2], 'rb_err', ARGV[3], 'rb_pending', ARGV[4], 'rb_flight', ARGV[5], 'rb_budget', ARGV[6])
return 1
`)

// sweepScript looks at one bounded page of owner entries and removes those
// of keys that are no longer assigned and whose owner is no longer live: a
// key removed from the configs while its owner was dead would otherwise keep
// its entry forever. The leader pages through the whole hash over time.
//
// KEYS: nodes assign owner state
// ARGV: cursor count
// Returns the next cursor ("0" at the end).
var sweepScript = script(`
local page = redis.call('HSCAN', KEYS[3], ARGV[1], 'COUNT', ARGV[2])
local entries = page[2]
local tr = newTrack(KEYS[4], KEYS[1])
for i = 1, #entries, 2 do
  local key, cur = entries[i], entries[i + 1]
  if redis.call('HEXISTS', KEYS[2], key) == 0 then
    local on, os = string.match(cur, '^(%S+) (%S+) ')
    if not live(KEYS[1], on, os) then
      local rec = redis.call('HGET', KEYS[4], key)
      redis.call('HDEL', KEYS[3], key)
      if rec then redis.call('HDEL', KEYS[4], key) end
      change(tr, key, rec, cur, nil, nil, false)
    end
  end
end
applyTrack(tr, KEYS[2])
return page[1]
`)

// avoidScript records which keys a node cannot run, for the leader to place
// elsewhere: until it says otherwise (a key its getConfig does not return),
// or for a cooldown (a key it failed to create too often). Expired entries
// of any node go at the same time.
//
// KEYS: avoid
// ARGV: node channel key cooldown_ms … (cooldown "0": until removed, "-":
// remove)
var avoidScript = script(`
for i = 3, #ARGV, 2 do
  local key, cd = ARGV[i], ARGV[i + 1]
  local parts = {}
  for n, u in string.gmatch(redis.call('HGET', KEYS[1], key) or '', '(%S+)=(%d+)') do
    if n ~= ARGV[1] and (tonumber(u) == 0 or tonumber(u) > now) then parts[#parts + 1] = n .. '=' .. u end
  end
  if cd ~= '-' then
    local u = '0'
    if cd ~= '0' then u = fmt(now + tonumber(cd)) end
    parts[#parts + 1] = ARGV[1] .. '=' .. u
  end
  if #parts == 0 then redis.call('HDEL', KEYS[1], key) else redis.call('HSET', KEYS[1], key, table.concat(parts, ' ')) end
end
redis.call('PUBLISH', ARGV[2], 'avoid ' .. ARGV[1])
return 1
`)

// forgiveScript drops the give-ups of keys (entries with an end time),
// keeping the entries of nodes that do not know them: a key that left
// quarantine starts with a clean slate.
//
// KEYS: avoid
// ARGV: key …
var forgiveScript = script(`
for i = 1, #ARGV do
  local parts = {}
  for n, u in string.gmatch(redis.call('HGET', KEYS[1], ARGV[i]) or '', '(%S+)=(%d+)') do
    if tonumber(u) == 0 then parts[#parts + 1] = n .. '=0' end
  end
  if #parts == 0 then redis.call('HDEL', KEYS[1], ARGV[i]) else redis.call('HSET', KEYS[1], ARGV[i], table.concat(parts, ' ')) end
end
return 1
`)

// drainNodeScript drains a live node until a time: it stays a member and
// gets no keys. It refuses a node that is not live (-1) and a drain that
// would leave no node taking keys (-2). Expired drains of any node go.
//
// KEYS: nodes drains
// ARGV: node duration_ms channel
// Returns {1, until_ms} or {code}.
var drainNodeScript = script(`
local alive, by = liveMembers(KEYS[1])
if not by[ARGV[1]] or (tonumber(by[ARGV[1]].e or '') or 0) <= now then return {-1} end
local others = 0
for _, n in ipairs(alive) do
  local w = tonumber(by[n].w or '')
  local d = tonumber(redis.call('HGET', KEYS[2], n) or '0') or 0
  if n ~= ARGV[1] and w and w > 0 and d <= now then others = others + 1 end
end
if others == 0 then return {-2} end
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if (tonumber(all[i + 1]) or 0) <= now then redis.call('HDEL', KEYS[2], all[i]) end
end
local untilMs = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], fmt(untilMs))
redis.call('PUBLISH', ARGV[3], 'rebalance')
return {1, untilMs}
`)

// undrainScript ends a node's drain; 0 if it had none in force.
//
// KEYS: drains
// ARGV: node channel
var undrainScript = script(`
local d = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
redis.call('HDEL', KEYS[1], ARGV[1])
if d <= now then return 0 end
redis.call('PUBLISH', ARGV[2], 'rebalance')
return 1
`)

// freezeScript freezes the service for a while, unless a freeze is in
// force: then it returns the time that freeze has left (ms) instead of 0.
//
// KEYS: freeze
// ARGV: who duration_ms channel
var freezeScript = script(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PUBLISH', ARGV[3], 'rebalance')
  return 0
end
return math.max(1, redis.call('PTTL', KEYS[1]))
`)

// holdScript records a node's hold until now + duration on Redis's clock
// (a restart hold or a join hold), with the session it was taken in.
//
// KEYS: hash
// ARGV: node duration_ms session
var holdScript = script(`
redis.call('HSET', KEYS[1], ARGV[1], fmt(now + tonumber(ARGV[2])) .. ' ' .. ARGV[3])
return 1
`)

// thawScript ends a freeze; 0 if none was in force.
//
// KEYS: freeze
// ARGV: channel
var thawScript = script(`
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[1], 'rebalance')
return 1
`)

// forceGateScript lets one node at a time force out a dead leader.
//
// KEYS: forcing
// ARGV: node ttl_ms
var forceGateScript = script(`
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
`)

// purgeScript deletes a retired service's keys, unless a member is live.
//
// KEYS: nodes, then every key of the service
// Returns the number of keys deleted, or -1 while a member is live. It
// reads the record of the layout before the membership hash too (a sorted
// set of leases; see upgradeScript).
var purgeScript = script(`
if type(redis.pcall('HLEN', KEYS[1])) == 'number' then
  if #liveMembers(KEYS[1]) > 0 then return -1 end
else
  local z = redis.pcall('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, 1)
  if type(z) == 'table' and not z.err and #z > 0 then return -1 end
end
local n = 0
for i = 1, #KEYS do n = n + redis.call('DEL', KEYS[i]) end
return n
`)

// statusScript reads everything a Status needs in one atomic step.
//
// KEYS: nodes leader assign owner state cfgerr
// Returns {server_ms, leader{node,session,epoch}, nodes{id,expiry,weight,
// session,ttl,cfgerr…}, assign{k,v…}, owner{k,v…}, {grace_left_ms, why},
// state{k,v…}}.
var statusScript = script(`
requireRecord(KEYS[1])
local alive, by = liveMembers(KEYS[1])
local out = {}
for _, n in ipairs(alive) do
  out[#out + 1] = n
  out[#out + 1] = by[n].e
  out[#out + 1] = by[n].w or ''
  out[#out + 1] = by[n].s or ''
  out[#out + 1] = by[n].t or '0'
  out[#out + 1] = redis.call('HGET', KEYS[6], n) or ''
end
return {now, redis.call('HMGET', KEYS[2], 'node', 'session', 'epoch', 'rb_at', 'rb_moves', 'rb_err'), out,
  redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4]),
  {graceLeft(KEYS[1]), redis.call('HGET', KEYS[1], 'why') or ''},
  redis.call('HGETALL', KEYS[5])}
`)

// summaryScript reads what a Summary needs in one atomic step: per live
// node a handful of SCARDs and its counts of keys whose owner entry is
// their state, then at most ARGV[1] problem keys (in the order of
// keyStates: failing and hung first) and as many keys at risk, with their
// records. Nothing in it reads a whole hash or set, except the sets it
// lists, which it stops scanning at the limit. Keys that are creating or
// running by their owner entry have no set: they are found among the
// node's assigned keys and the moving set, looking at no more than twice
// the limit of keys in all, so that a summary that lists them stays
// bounded (the counts stay exact; the list may then name fewer).
//
// KEYS: nodes leader assign state cfgerr owner
// ARGV: limit (0: counts only) assigned_prefix
// Returns {server_ms, leader{node,session,epoch,rb_at,rb_moves,rb_err},
// states{st…}, nodes{id,expiry,weight,session,ttl,cfgerr,assigned,count per
// state…}, {assigned, moving}, {grace_left_ms, why}, problems{key,node,
// record,assigned…}, atrisk{key,node,assigned…}}.
var summaryScript = script(`
local limit = tonumber(ARGV[1])
requireRecord(KEYS[1])
local ids, by = liveMembers(KEYS[1])
local expiry, score = {}, {}
for _, n in ipairs(ids) do
  expiry[n] = tonumber(by[n].e)
  score[n] = by[n].e
end
local function list(set, node, into)
  if #into >= 2 * limit then return end
  local cursor = '0'
  repeat
    local page = redis.call('SSCAN', set, cursor, 'COUNT', 100)
    cursor = page[1]
    for _, key in ipairs(page[2]) do
      if #into >= 2 * limit then return end
      into[#into + 1] = key
      into[#into + 1] = node
    end
  until cursor == '0'
end
-- Keys of a node's session whose owner entry says st and that have no
-- record, with the record the entry stands for.
local budget = 2 * limit
local anyRecord = redis.call('HLEN', KEYS[4]) > 0
local implicit, implicitTo = {}, {}
local function listImplicit(n, session, st, into)
  local prefix = n .. ' ' .. session .. ' '
  local seen = {}
  for s, set in ipairs({ARGV[2] .. n, KEYS[4] .. ':moving'}) do
    local cursor = '0'
    repeat
      if #into >= 2 * limit or budget <= 0 then return end
      local page = redis.call('SSCAN', set, cursor, 'COUNT', 100)
      cursor = page[1]
      local keys = page[2]
      if #keys > 0 then
        budget = budget - #keys
        local own = redis.call('HMGET', KEYS[6], unpack(keys))
        local rec = {}
        if anyRecord then rec = redis.call('HMGET', KEYS[4], unpack(keys)) end
        for j, key in ipairs(keys) do
          local o = own[j]
          if not rec[j] and not seen[key] and hasPrefix(o, prefix) and implicitOf(o) == st then
            seen[key] = true
            local at = string.match(o, ' r(%d+)') or fmt(math.floor(tonumber(string.match(o, '^%S+ %S+ (%d+)') or '0') / 1000))
            implicit[key] = '{"n":"' .. n .. '","s":"' .. session .. '","st":"' .. st .. '","t":' .. at .. '}'
            if s == 1 then implicitTo[key] = n end
            into[#into + 1] = key
            into[#into + 1] = n
            if #into >= 2 * limit then return end
          end
        end
      end
    until cursor == '0'
  end
end
local counts = {}
if #ids > 0 then
  local fields = {}
  for _, n in ipairs(ids) do
    fields[#fields + 1] = 'running:' .. n
    fields[#fields + 1] = 'creating:' .. n
  end
  local v = redis.call('HMGET', KEYS[4] .. ':count', unpack(fields))
  for i, f in ipairs(fields) do counts[f] = tonumber(v[i]) or 0 end
end
local nodes, problems, risky, count, suspect = {}, {}, {}, {}, {}
for _, n in ipairs(ids) do
  local ttl = tonumber(by[n].t or '0') or 0
  suspect[n] = ttl > 0 and expiry[n] - now < ttl / 2
  nodes[#nodes + 1] = n
  nodes[#nodes + 1] = score[n]
  nodes[#nodes + 1] = by[n].w or ''
  nodes[#nodes + 1] = by[n].s or ''
  nodes[#nodes + 1] = tostring(ttl)
  nodes[#nodes + 1] = redis.call('HGET', KEYS[5], n) or ''
  nodes[#nodes + 1] = tostring(redis.call('SCARD', ARGV[2] .. n))
  for _, st in ipairs(keyStates) do
    local c = redis.call('SCARD', byState(KEYS[4], st, n))
    nodes[#nodes + 1] = tostring(c + (counts[st .. ':' .. n] or 0))
    count[st .. ' ' .. n] = c
  end
end
if limit > 0 then
  for _, st in ipairs(keyStates) do
    for _, n in ipairs(ids) do
      local into = problems
      if st == 'running' then into = suspect[n] and risky or nil end
      if into and count[st .. ' ' .. n] > 0 then list(byState(KEYS[4], st, n), n, into) end
      if into and (counts[st .. ':' .. n] or 0) > 0 then listImplicit(n, by[n].s or '', st, into) end
    end
  end
end
local recs, risks = {}, {}
-- A key found among a node's assigned keys is assigned to it, and one
-- found without a record has none.
for i = 1, #problems, 2 do
  local key = problems[i]
  recs[#recs + 1] = key
  recs[#recs + 1] = problems[i + 1]
  recs[#recs + 1] = implicit[key] or redis.call('HGET', KEYS[4], key) or ''
  recs[#recs + 1] = implicitTo[key] or redis.call('HGET', KEYS[3], key) or ''
end
for i = 1, #risky, 2 do
  local key = risky[i]
  risks[#risks + 1] = key
  risks[#risks + 1] = risky[i + 1]
  risks[#risks + 1] = implicitTo[key] or redis.call('HGET', KEYS[3], key) or ''
end
return {now, redis.call('HMGET', KEYS[2], 'node', 'session', 'epoch', 'rb_at', 'rb_moves', 'rb_err'), keyStates, nodes,
  {redis.call('HLEN', KEYS[3]), redis.call('SCARD', KEYS[4] .. ':moving')},
  {graceLeft(KEYS[1]), redis.call('HGET', KEYS[1], 'why') or ''}, recs, risks}
`)

// memoryScript reads INFO memory on the server that holds the service's
// keys (in a Cluster, the master of its slot, which a plain INFO may miss).
//
// KEYS: any key of the service
var memoryScript = script(`
local s = redis.pcall('INFO', 'memory')
if type(s) == 'table' then return '' end
return s
`)
