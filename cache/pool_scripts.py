"""The shared DDR pool's Redis-side bookkeeping: key names and the Lua scripts.

Every bookkeeping key of one namespace carries the hash tag ``{<namespace>}``, so on
Redis Cluster they share one slot and each script below runs atomically on one node.
Block values stay under ``<namespace>:<hash>`` and spread over the cluster; a script
never touches them (that would cross slots): writers SET and DEL values themselves,
and the scripts only keep the books, in an order that makes the books an upper bound
of what is stored (reserve before SET, DEL before forget).

Keys (``P`` = ``tkvpool:{<namespace>}``):

* ``P:lru``: ZSET of the pool's blocks, scored by last use (Redis TIME, ms): the index
  every replica mirrors and the pool-wide eviction order.
* ``P:size``: HASH block -> stored bytes, for blocks in ``lru``, ``reserved`` or
  ``evicting``.
* ``P:bytes``: bytes counted against the capacity (``lru`` + ``reserved`` +
  ``evicting``). ``P:evbytes``: the ``evicting`` part.
* ``P:reserved``: ZSET block -> deadline, writes in flight (counted, not yet visible).
* ``P:rtoken``: HASH block -> the token of its reservation (one per RESERVE call), so
  only the writer holding a reservation commits or releases it.
* ``P:evicting``: ZSET block -> deadline, claimed by the demoter (counted until
  forgotten, no longer visible).
* ``P:lease``: ZSET block -> expiry, blocks a replica is loading (never claimed).
* ``P:log``: STREAM of ``op`` (``a`` added, ``r`` removed), ``h`` (block), ``s`` (size), ``n``,
  capped at about ``maxlen`` entries: what replicas follow to stay in sync. A shared
  flash tier (``cache.tiers.shared_flash``) logs its stores and deletions here too, as
  ``op`` ``fa`` / ``fr`` with ``e`` (the flash environment's id: only replicas on that
  environment apply them) and ``w`` (the writing replica, which skips its own).
* ``P:seq``: INCR'd once per log entry, whose field ``n`` carries it: a follower that
  sees a gap in ``n`` (the log was trimmed past it) re-reads the whole index.
* ``P:demoter``: STRING, the replica id holding the demoter lease.

Time is the server's (``TIME``), so replicas on hosts with skewed clocks agree.
"""

from __future__ import annotations

from dataclasses import dataclass

# Each script starts with the current time in ms as `now`.
_NOW = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

RESERVE = (
    _NOW
    + """
-- KEYS: lru size bytes reserved rtoken; ARGV: capacity reservation_ms block_size token hash...
local cap, ttl, bsize = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  -- a writer that died (or stalled) between reserve and commit: give its bytes back
  used = used - tonumber(redis.call('HGET', KEYS[2], h) or '0')
  redis.call('HDEL', KEYS[2], h)
  redis.call('HDEL', KEYS[5], h)
  redis.call('ZREM', KEYS[4], h)
end
local out = {}
for i = 5, #ARGV do
  local h = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], h) then
    redis.call('ZADD', KEYS[1], now, h)
    out[#out + 1] = 1      -- already pooled (touched)
  elseif redis.call('HEXISTS', KEYS[2], h) == 1 then
    out[#out + 1] = 3      -- being written or demoted by someone
  elseif used + bsize > cap then
    out[#out + 1] = 2      -- pool full
  else
    used = used + bsize
    redis.call('HSET', KEYS[2], h, bsize)
    redis.call('HSET', KEYS[5], h, ARGV[4])
    redis.call('ZADD', KEYS[4], now + ttl, h)
    out[#out + 1] = 0      -- reserved: SET it, then commit
  end
end
redis.call('SET', KEYS[3], used)
return out
"""
)

COMMIT = (
    _NOW
    + """
-- KEYS: lru size reserved log seq rtoken; ARGV: maxlen hash token hash token ...
-- Only the reservation a writer holds (its token) is committed: a writer that stalled
-- past its reservation must not publish another writer's later one of the same block.
local out = {}
for i = 2, #ARGV, 2 do
  local h = ARGV[i]
  if redis.call('HGET', KEYS[6], h) == ARGV[i + 1] and redis.call('ZREM', KEYS[3], h) == 1 then
    redis.call('HDEL', KEYS[6], h)
    redis.call('ZADD', KEYS[1], now, h)
    local s = redis.call('HGET', KEYS[2], h)
    local n = redis.call('INCR', KEYS[5])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'op', 'a', 'h', h, 's', s, 'n', n)
    out[#out + 1] = 1
  elseif redis.call('HEXISTS', KEYS[2], h) == 1 then
    out[#out + 1] = 2      -- another writer's (reserved, pooled or being demoted): leave it
  else
    out[#out + 1] = 0      -- the reservation expired: the caller deletes the value
  end
end
return out
"""
)

FORGET = (
    _NOW
    + """
-- KEYS: lru size bytes evbytes evicting log seq; ARGV: maxlen hash...
-- (values already DEL'd; reservations are given back by RELEASE, by their token)
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local ev = tonumber(redis.call('GET', KEYS[4]) or '0')
local n = 0
for i = 2, #ARGV do
  local h = ARGV[i]
  local s = tonumber(redis.call('HGET', KEYS[2], h) or '0')
  if redis.call('ZREM', KEYS[1], h) == 1 then
    local seq = redis.call('INCR', KEYS[7])
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[1], '*', 'op', 'r', 'h', h, 's', s, 'n', seq)
    redis.call('HDEL', KEYS[2], h)
    used = used - s
    n = n + 1
  elseif redis.call('ZREM', KEYS[5], h) == 1 then
    redis.call('HDEL', KEYS[2], h)
    used, ev = used - s, ev - s
    n = n + 1
  end
end
redis.call('SET', KEYS[3], used)
redis.call('SET', KEYS[4], ev)
return n
"""
)

RELEASE = (
    _NOW
    + """
-- KEYS: size bytes reserved rtoken; ARGV: hash token hash token ...
-- Give back reservations whose SET failed, only those the caller still holds; returns
-- 1 per block given back (its value, if any, is the caller's to delete), else 0.
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local out = {}
for i = 1, #ARGV, 2 do
  local h = ARGV[i]
  if redis.call('HGET', KEYS[4], h) == ARGV[i + 1] and redis.call('ZREM', KEYS[3], h) == 1 then
    used = used - tonumber(redis.call('HGET', KEYS[1], h) or '0')
    redis.call('HDEL', KEYS[1], h)
    redis.call('HDEL', KEYS[4], h)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('SET', KEYS[2], used)
return out
"""
)

LEASE = (
    _NOW
    + """
-- KEYS: lru lease; ARGV: lease_ms hash...  touch pooled blocks and lease them
local out = {}
for i = 2, #ARGV do
  local h = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], h) then
    redis.call('ZADD', KEYS[1], now, h)
    redis.call('ZADD', KEYS[2], 'GT', now + tonumber(ARGV[1]), h)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)

CLAIM = (
    _NOW
    + """
-- KEYS: lru size bytes evbytes evicting lease log seq
-- ARGV: target_bytes evict_ms maxlen max_victims
-- Move least recently used, unleased blocks to `evicting` until the live bytes (counted
-- minus already evicting) are at most target; also re-claim evictions whose demoter died.
local target, ttl, maxv = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
local victims = {}
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, maxv)) do
  redis.call('ZADD', KEYS[5], now + ttl, h)
  victims[#victims + 1] = h
end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local ev = tonumber(redis.call('GET', KEYS[4]) or '0')
local offset = 0
while used - ev > target and #victims < maxv do
  local page = redis.call('ZRANGE', KEYS[1], offset, offset + 63)
  if #page == 0 then break end
  for _, h in ipairs(page) do
    if used - ev <= target or #victims >= maxv then break end
    if redis.call('ZSCORE', KEYS[6], h) then
      offset = offset + 1  -- leased: in use by a replica, skip
    else
      local s = tonumber(redis.call('HGET', KEYS[2], h) or '0')
      redis.call('ZREM', KEYS[1], h)
      redis.call('ZADD', KEYS[5], now + ttl, h)
      local n = redis.call('INCR', KEYS[8])
      redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[3], '*', 'op', 'r', 'h', h, 's', s, 'n', n)
      ev = ev + s
      victims[#victims + 1] = h
    end
  end
end
redis.call('SET', KEYS[4], ev)
return victims
"""
)

FLASHLOG = (
    _NOW
    + """
-- KEYS: log seq; ARGV: maxlen op env writer hash size hash size ...
-- Log a shared flash tier's stores (op fa) or deletions (op fr), one entry per block.
for i = 5, #ARGV, 2 do
  local n = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'op', ARGV[2], 'h', ARGV[i],
             's', ARGV[i + 1], 'n', n, 'e', ARGV[3], 'w', ARGV[4])
end
return 0
"""
)

SNAPSHOT = """
-- KEYS: lru size log seq; returns {last log id, seq, {hash, size, ...} least recent first}
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, h in ipairs(members) do
  out[#out + 1] = h
  out[#out + 1] = redis.call('HGET', KEYS[2], h) or '0'
end
return {id, tonumber(redis.call('GET', KEYS[4]) or '0'), out}
"""

ELECT = """
-- KEYS: demoter; ARGV: replica_id ttl_ms. Take or renew the demoter lease.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The bookkeeping key names of one namespace (see the module docstring)."""

    lru: bytes
    size: bytes
    used: bytes  # P:bytes
    evbytes: bytes
    reserved: bytes
    evicting: bytes
    lease: bytes
    log: bytes
    seq: bytes
    demoter: bytes
    rtoken: bytes

    @classmethod
    def of(cls, namespace: str) -> PoolKeys:
        p = f"tkvpool:{{{namespace}}}:"
        names = ("lru", "size", "bytes", "evbytes", "reserved", "evicting", "lease", "log")
        return cls(*((p + n).encode() for n in (*names, "seq", "demoter", "rtoken")))

    def all(self) -> list[bytes]:
        return [getattr(self, name) for name in self.__slots__]
