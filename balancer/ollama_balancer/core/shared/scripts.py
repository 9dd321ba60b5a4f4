"""The server-side Lua scripts: every shared change is one atomic script (one round trip).

Times are the server's (``TIME``, ms), so replicas' clocks never need to agree;
Redis ≥ 5 replicates scripts by effects, so ``TIME`` inside them is allowed.
Leases live in one sorted set per (pod, model), scored by expiry: a script that
touches the set first removes expired members (leases of a replica that died
and stopped renewing), so a dead replica's slots come back within the TTL.
Every script that changes counts bumps ``seq`` and publishes an event carrying
it (``occupancy.py`` explains the ordering).  The event fields are
``k`` kind, ``s`` seq, ``t`` server ms, ``p`` pod, ``m`` model, ``h`` held after,
``n`` the pod's slots (0 = unknown), ``r`` member (a load's owner), ``u`` until
(ms), ``a`` affinity key, ``b`` the changes of the scheduler's board the script
made (:class:`~.boardmirror.BoardChange`; scripts that change only the board
publish kind ``board``).  Scripts that change the board also return their event,
so the calling replica applies exactly what the others will.

The scheduler's board (:mod:`.board`) is kept beside the leases:

* ``holder:<pod|model>`` — a hash of holder documents by lease member, written
  by the acquire that took the lease and deleted by its release; a refresh
  drops documents whose lease expired, so a dead replica's holders go with its
  leases (``holders`` indexes these hashes);
* ``waiting`` + ``waiter`` — waiting requests: a sorted set scored by expiry
  (the replica's renewal pushes it one TTL ahead, like its leases) and their
  documents; a refresh drops the expired ones with any promise made to them;
* ``promises`` — beneficiary → the seat taken back for it (pod, model, victim,
  until); ``reclaiming`` — the victims' members;
* ``fair`` — the fair-share counters, stored as text of doubles, raised to a
  charge's floor before it is added (an idle tenant banks no credit);
* ``epoch`` — an id set when missing, by a refresh (the board's read) or a
  replica's write-back after a reconnect (``rebuild``, a random id): another value
  than the one a replica last read means the store lost its data.

Times a replica sends inside documents are relative to the server's now (ms
ago for a start, a first byte or an arrival; ms ahead for a deadline), so that
they never depend on the replica's clock offset.

Keys named inside a script (the lease sets a refresh walks) are not declared in
KEYS: the store must be a standalone Redis/Valkey (or a primary with replicas),
not a Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["SCRIPTS", "Script"]

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


def _script(name: str, body: str) -> Script:
    return Script(name, _PRELUDE + body)


# A fair-share counter: raised to ``floor`` (when given), then moved by ``delta``.
_FAIR = """
local function charge(key, field, delta, floor, ttl)
  local v = tonumber(redis.call('HGET', key, field)) or 0
  local low = tonumber(floor)
  if low and v < low then v = low end
  local text = string.format('%.17g', v + tonumber(delta))
  redis.call('HSET', key, field, text)
  redis.call('PEXPIRE', key, ttl)
  return text
end
"""


# KEYS: lease set, index, loads, seq
#       [board: holders of (pod, model), holder index, waiting, waiters, promises, fair]
# ARGV: member, ttl ms, slots, overflow 0|1, cold 0|1, field, pod, model, channel, load ttl ms
#       [board: request id, holder document or '', counter field or '', delta, floor or '',
#        counter ttl ms]
# -> {granted 0|1, held, reclaimed, owns load 0|1, seq, now[, event]}
ACQUIRE = _script(
    "acquire",
    _FAIR
    + """
local now = now_ms()
local slots = tonumber(ARGV[3])
local board = KEYS[5] ~= nil
local reclaimed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
-- A seat promised to a reclaim's beneficiary is held for everyone else: by the victim's
-- lease while it lasts, by the promise once the victim let go.
local promised, mine = 0, false
if board and redis.call('HLEN', KEYS[9]) > 0 then
  local raw = redis.call('HGETALL', KEYS[9])
  for i = 1, #raw, 2 do
    local d = cjson.decode(raw[i + 1])
    if d.u > now and d.p == ARGV[7] and d.m == ARGV[8] then
      if raw[i] == ARGV[11] then
        mine = true
      elseif not redis.call('ZSCORE', KEYS[1], d.v) then
        promised = promised + 1
      end
    end
  end
end
if held + promised >= slots and ARGV[4] ~= '1' and not mine then
  local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
  local ev = nil
  if reclaimed > 0 then ev = {k='rec', t=now, p=ARGV[7], m=ARGV[8], h=held, n=slots} end
  -- a bind that lost its slot ends the wait all the same (the request queues again)
  if board and redis.call('ZREM', KEYS[7], ARGV[11]) + redis.call('HDEL', KEYS[8], ARGV[11]) > 0
  then
    ev = ev or {k='board', t=now}
    ev.b = {{k='unwait', i=ARGV[11]}}
  end
  if not ev then return {0, held, reclaimed, 0, seq, now} end
  seq = redis.call('INCR', KEYS[4])
  ev.s = seq
  local text = cjson.encode(ev)
  redis.call('PUBLISH', ARGV[9], text)
  return {0, held, reclaimed, 0, seq, now, text}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('SADD', KEYS[2], ARGV[6])
held = redis.call('ZCARD', KEYS[1])
local owns = 0
if ARGV[5] == '1' then
  local rec = redis.call('HGET', KEYS[3], ARGV[6])
  if (not rec) or cjson.decode(rec).e <= now then
    redis.call('HSET', KEYS[3], ARGV[6],
      cjson.encode({r=ARGV[1], t=now, e=now + tonumber(ARGV[10])}))
    owns = 1
  end
end
local seq = redis.call('INCR', KEYS[4])
local ev = {k='acq', s=seq, t=now, p=ARGV[7], m=ARGV[8], h=held, n=slots}
if owns == 1 then ev.r = ARGV[1] end
if board then
  local changes = {}
  if ARGV[12] ~= '' then
    local d = cjson.decode(ARGV[12])
    d.s = now
    redis.call('HSET', KEYS[5], ARGV[1], cjson.encode(d))
    redis.call('SADD', KEYS[6], ARGV[6])
    changes[#changes + 1] = {k='hold', i=ARGV[1], d=d}
  end
  -- the request has its slot: it waits no more, and a promise made to it is used
  local waited = redis.call('ZREM', KEYS[7], ARGV[11]) + redis.call('HDEL', KEYS[8], ARGV[11])
  local used = redis.call('HDEL', KEYS[9], ARGV[11])
  if ARGV[12] == '' then  -- (a hold says both)
    if waited > 0 then changes[#changes + 1] = {k='unwait', i=ARGV[11]} end
    if used > 0 then changes[#changes + 1] = {k='unpromise', i=ARGV[11]} end
  end
  if ARGV[13] ~= '' then
    changes[#changes + 1] = {k='fair', i=ARGV[13],
                             v=charge(KEYS[10], ARGV[13], ARGV[14], ARGV[15], ARGV[16])}
  end
  if #changes > 0 then ev.b = changes end
end
local text = cjson.encode(ev)
redis.call('PUBLISH', ARGV[9], text)
return {1, held, reclaimed, owns, seq, now, text}
""",
)

# KEYS: lease set, index, loads, seq
#       [board: holders of (pod, model), holder index, reclaiming, fair]
# ARGV: member, field, pod, model, slots, channel
#       [board: counter field or '', delta, floor or '', counter ttl ms]
# -> {held, reclaimed, seq, now, aborted load 0|1[, event]}
RELEASE = _script(
    "release",
    _FAIR
    + """
local now = now_ms()
redis.call('ZREM', KEYS[1], ARGV[1])
local reclaimed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
local aborted = 0
local rec = redis.call('HGET', KEYS[3], ARGV[2])
if rec and cjson.decode(rec).r == ARGV[1] then
  -- the request that started this load left before its first byte: Ollama aborts it
  redis.call('HDEL', KEYS[3], ARGV[2])
  aborted = 1
end
local seq = redis.call('INCR', KEYS[4])
local ev = {k='rel', s=seq, t=now, p=ARGV[3], m=ARGV[4], h=held, n=tonumber(ARGV[5])}
if aborted == 1 then ev.r = ARGV[1] end
if KEYS[5] then
  local changes = {}
  if redis.call('HDEL', KEYS[5], ARGV[1]) == 1 then
    changes[#changes + 1] = {k='unhold', i=ARGV[1]}
    if redis.call('EXISTS', KEYS[5]) == 0 then redis.call('SREM', KEYS[6], ARGV[2]) end
  end
  redis.call('HDEL', KEYS[7], ARGV[1])  -- a reclaim mark goes with its lease
  if ARGV[7] ~= '' then
    changes[#changes + 1] = {k='fair', i=ARGV[7],
                             v=charge(KEYS[8], ARGV[7], ARGV[8], ARGV[9], ARGV[10])}
  end
  if #changes > 0 then ev.b = changes end
end
local text = cjson.encode(ev)
redis.call('PUBLISH', ARGV[6], text)
return {held, reclaimed, seq, now, aborted, text}
""",
)

# KEYS: loads, loaded, seq
# ARGV: member, field, pod, model, channel
# -> {done 0|1, load ms, seq, now}
LOADED = _script(
    "loaded",
    """
local rec = redis.call('HGET', KEYS[1], ARGV[2])
if not rec then return {0, 0, 0, 0} end
local d = cjson.decode(rec)
if d.r ~= ARGV[1] then return {0, 0, 0, 0} end
local now = now_ms()
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], now)
local seq = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[5], cjson.encode({k='loaded', s=seq, t=now, p=ARGV[3], m=ARGV[4]}))
return {1, now - d.t, seq, now}
""",
)

# KEYS: index, loads, loaded, penalties, learn:load, learn:service, seq
# ARGV: lease key prefix, channel, loaded memory ms
# -> {now, seq, reclaimed, [field, held]..., loads, loaded, penalties, load times, service times}
SNAPSHOT = _script(
    "snapshot",
    """
local now = now_ms()
local reclaimed = 0
local held = {}
for _, f in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. f
  local r = redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local h = redis.call('ZCARD', key)
  if r > 0 then
    reclaimed = reclaimed + r
    local pod, model = string.match(f, '^(.*)|([^|]*)$')
    local seq = redis.call('INCR', KEYS[7])
    redis.call('PUBLISH', ARGV[2], cjson.encode(
      {k='rec', s=seq, t=now, p=pod, m=model, h=h, n=0}))
  end
  if h == 0 then
    redis.call('SREM', KEYS[1], f)
  else
    held[#held + 1] = f
    held[#held + 1] = h
  end
end
local function live(key, alive)
  local out = {}
  local raw = redis.call('HGETALL', key)
  for i = 1, #raw, 2 do
    if alive(raw[i + 1]) then
      out[#out + 1] = raw[i]
      out[#out + 1] = raw[i + 1]
    else
      redis.call('HDEL', key, raw[i])
    end
  end
  return out
end
local loads = live(KEYS[2], function(v) return cjson.decode(v).e > now end)
local memory = tonumber(ARGV[3])
local loaded = live(KEYS[3], function(v) return now - tonumber(v) < memory end)
local pens = live(KEYS[4], function(v) return tonumber(v) > now end)
local seq = tonumber(redis.call('GET', KEYS[7]) or '0')
return {now, seq, reclaimed, held, loads, loaded, pens,
        redis.call('HGETALL', KEYS[5]), redis.call('HGETALL', KEYS[6])}
""",
)

# KEYS: index
# ARGV: ttl ms, then (set key, member, index field or '') triples
# -> members that were missing (expired and reclaimed meanwhile, or the store restarted)
RENEW = _script(
    "renew",
    """
local expires = now_ms() + tonumber(ARGV[1])
local readded = 0
for i = 2, #ARGV, 3 do
  if not redis.call('ZSCORE', ARGV[i], ARGV[i + 1]) then readded = readded + 1 end
  redis.call('ZADD', ARGV[i], expires, ARGV[i + 1])
  if ARGV[i + 2] ~= '' then redis.call('SADD', KEYS[1], ARGV[i + 2]) end
end
return readded
""",
)

# KEYS: penalties, seq
# ARGV: pod, seconds as ms, channel
PENALISE = _script(
    "penalise",
    """
local now = now_ms()
local untl = now + tonumber(ARGV[2])
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if old > untl then untl = old end
redis.call('HSET', KEYS[1], ARGV[1], untl)
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], cjson.encode({k='pen', s=seq, t=now, p=ARGV[1], u=untl}))
return untl
""",
)

# KEYS: penalties, seq
# ARGV: pod, channel
UNPENALISE = _script(
    "unpenalise",
    """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], cjson.encode({k='unpen', s=seq, t=now_ms(), p=ARGV[1]}))
return 1
""",
)

# KEYS: learn:load, learn:service
# ARGV: model, load seconds or '', service seconds or '', EWMA weight, ttl ms
LEARN = _script(
    "learn",
    """
for i = 1, 2 do
  local x = tonumber(ARGV[i + 1])
  if x then
    local old = tonumber(redis.call('HGET', KEYS[i], ARGV[1]))
    local new = x
    if old then new = old + tonumber(ARGV[4]) * (x - old) end
    redis.call('HSET', KEYS[i], ARGV[1], string.format('%.6f', new))
    redis.call('PEXPIRE', KEYS[i], ARGV[5])
  end
end
return 1
""",
)

# KEYS: lock; ARGV: owner, channel, model
UNLOCK = _script(
    "unlock",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({k='unlock', m=ARGV[3]}))
return 1
""",
)

# The token buckets of ollama_balancer.core.auth.TokenBucket, server-side: level and the time
# it was computed at; missing = full.  A bucket idle for 120 s is full again whatever its
# level was (it is floored at -1 minute), so it may expire then.
_BUCKETS = """
local function now_s()
  if ARGV[6] ~= '' then return tonumber(ARGV[6]) / 1000 end
  return now_ms() / 1000
end
local function refill(key, pm, now)
  local level = tonumber(redis.call('HGET', key, 'level'))
  if level == nil then return pm end
  local updated = tonumber(redis.call('HGET', key, 'updated'))
  return math.min(pm, level + (now - updated) * pm / 60)
end
local function store(key, level, now)
  redis.call('HSET', key, 'level', string.format('%.17g', level),
             'updated', string.format('%.17g', now))
  redis.call('PEXPIRE', key, 120000)
end
"""

# KEYS: in-flight set, requests bucket, tokens bucket
# ARGV: member, max concurrent, requests/min, tokens/min, ttl ms, now ms or ''
# -> {code (0 admitted, 1 concurrency, 2 tokens, 3 requests), wait ms}
QUOTA_ADMIT = _script(
    "quota_admit",
    _BUCKETS
    + """
local now = now_s()
local maxc = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now * 1000)
  if redis.call('ZCARD', KEYS[1]) >= maxc then return {1, 1000} end
end
if tpm > 0 then
  local level = refill(KEYS[3], tpm, now)
  store(KEYS[3], level, now)
  local missing = math.min(1, tpm) - level
  if missing > 1e-9 then return {2, math.ceil(missing / (tpm / 60) * 1000)} end
end
if rpm > 0 then
  local level = refill(KEYS[2], rpm, now)
  local missing = math.min(1, rpm) - level
  if missing > 1e-9 then
    store(KEYS[2], level, now)
    return {3, math.ceil(missing / (rpm / 60) * 1000)}
  end
  store(KEYS[2], level - 1, now)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[1], now * 1000 + tonumber(ARGV[5]), ARGV[1])
end
return {0, 0}
""",
)

# KEYS: in-flight set, tokens bucket
# ARGV: member, tokens/min, tokens used, (unused), (unused), now ms or ''
QUOTA_FINISH = _script(
    "quota_finish",
    _BUCKETS
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
local tpm = tonumber(ARGV[2])
local used = tonumber(ARGV[3])
if tpm > 0 and used > 0 then
  local now = now_s()
  store(KEYS[2], math.max(-tpm, refill(KEYS[2], tpm, now) - used), now)
end
return 1
""",
)


# ------------------------------------------------------------------ the scheduler's board

# KEYS: holders of (pod, model), seq
# ARGV: member, channel
# -> the event, or '' when the lease has no holder document or its first byte is known
FIRST_BYTE = _script(
    "first_byte",
    """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return '' end
local d = cjson.decode(raw)
if d.f then return '' end
local now = now_ms()
d.f = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(d))
local seq = redis.call('INCR', KEYS[2])
local text = cjson.encode({k='board', s=seq, t=now, b={{k='fb', i=ARGV[1], v=now}}})
redis.call('PUBLISH', ARGV[2], text)
return text
""",
)

# KEYS: waiting, waiters, seq
# ARGV: request id, document (relative times), ttl ms, channel
# -> the event
POST_WAITER = _script(
    "post_waiter",
    """
local now = now_ms()
local d = cjson.decode(ARGV[2])
d.a = now - d.a
if d.d then d.d = now + d.d end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(d))
local seq = redis.call('INCR', KEYS[3])
local text = cjson.encode({k='board', s=seq, t=now, b={{k='wait', i=ARGV[1], d=d}}})
redis.call('PUBLISH', ARGV[4], text)
return text
""",
)

# KEYS: waiting, waiters, promises, seq
# ARGV: request id, channel, lease key prefix
# -> the event, or '' when there was nothing to drop
DROP_WAITER = _script(
    "drop_waiter",
    """
local changes = {}
local waited = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('HDEL', KEYS[2], ARGV[1])
if waited > 0 then changes[#changes + 1] = {k='unwait', i=ARGV[1]} end
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if raw then
  -- the promised seat is anyone's again: the change says which, for the slot-freed signal
  redis.call('HDEL', KEYS[3], ARGV[1])
  local d = cjson.decode(raw)
  local held = redis.call('ZCARD', ARGV[3] .. d.p .. '|' .. d.m)
  changes[#changes + 1] = {k='unpromise', i=ARGV[1], d={p=d.p, m=d.m, h=held}}
end
if #changes == 0 then return '' end
local now = now_ms()
local seq = redis.call('INCR', KEYS[4])
local text = cjson.encode({k='board', s=seq, t=now, b=changes})
redis.call('PUBLISH', ARGV[2], text)
return text
""",
)

# KEYS: lease set of (pod, model), holders of (pod, model), promises, reclaiming, seq
# ARGV: victim member, beneficiary, pod, model, field, promise ttl ms, channel
# -> the event, or '' when refused (the victim's lease or holder is gone, it is being taken
#    back already, or the beneficiary holds a promise)
RECLAIM = _script(
    "reclaim",
    """
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then return '' end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return '' end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return '' end
local old = redis.call('HGET', KEYS[3], ARGV[2])
if old and cjson.decode(old).u > now then return '' end
local d = {p=ARGV[3], m=ARGV[4], v=ARGV[1], u=now + tonumber(ARGV[6])}
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[2], cjson.encode(d))
local seq = redis.call('INCR', KEYS[5])
local text = cjson.encode({k='board', s=seq, t=now, b={{k='promise', i=ARGV[2], d=d}}})
redis.call('PUBLISH', ARGV[7], text)
return text
""",
)

# KEYS: holder index, waiting, waiters, promises, reclaiming, fair, seq, epoch
# ARGV: lease key prefix, holder key prefix
# -> {now, seq, epoch, holders [member, doc]..., waiters [id, doc]..., counters [field, value]...,
#     promises [id, doc]..., reclaiming [member]...}
BOARD = _script(
    "board",
    """
local now = now_ms()
local epoch = redis.call('GET', KEYS[8])
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. '.' .. t[2]
  redis.call('SET', KEYS[8], epoch)
end
local holders = {}
for _, f in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local hk, lk = ARGV[2] .. f, ARGV[1] .. f
  local raw = redis.call('HGETALL', hk)
  for i = 1, #raw, 2 do
    local s = redis.call('ZSCORE', lk, raw[i])
    if s and tonumber(s) > now then
      holders[#holders + 1] = raw[i]
      holders[#holders + 1] = raw[i + 1]
    else
      redis.call('HDEL', hk, raw[i])  -- its lease expired (a replica died) or went
    end
  end
  if redis.call('EXISTS', hk) == 0 then redis.call('SREM', KEYS[1], f) end
end
for _, q in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  -- no replica renews it any more: gone, with the promise made to it
  redis.call('ZREM', KEYS[2], q)
  redis.call('HDEL', KEYS[3], q)
  redis.call('HDEL', KEYS[4], q)
end
local waiters = {}
local raw = redis.call('HGETALL', KEYS[3])
for i = 1, #raw, 2 do
  if redis.call('ZSCORE', KEYS[2], raw[i]) then
    waiters[#waiters + 1] = raw[i]
    waiters[#waiters + 1] = raw[i + 1]
  else
    redis.call('HDEL', KEYS[3], raw[i])
  end
end
local promises = {}
raw = redis.call('HGETALL', KEYS[4])
for i = 1, #raw, 2 do
  if cjson.decode(raw[i + 1]).u > now then
    promises[#promises + 1] = raw[i]
    promises[#promises + 1] = raw[i + 1]
  else
    redis.call('HDEL', KEYS[4], raw[i])
  end
end
local reclaiming = {}
raw = redis.call('HGETALL', KEYS[5])
for i = 1, #raw, 2 do
  local s = redis.call('ZSCORE', ARGV[1] .. raw[i + 1], raw[i])
  if s and tonumber(s) > now then
    reclaiming[#reclaiming + 1] = raw[i]
  else
    redis.call('HDEL', KEYS[5], raw[i])
  end
end
local seq = tonumber(redis.call('GET', KEYS[7]) or '0')
return {now, seq, epoch, holders, waiters, redis.call('HGETALL', KEYS[6]), promises, reclaiming}
""",
)

# KEYS: holder index, waiting, waiters, fair, seq
# ARGV: ttl ms, holder key prefix, channel, holders n, counters n, counter ttl ms,
#       then (field, member, document) per holder, (field, value) per counter,
#       (request id, document) per waiting request; documents in relative times
# What a replica holds and waits for, put back where the store lost it (documents only where
# missing), its waiting requests' expiry pushed one TTL ahead, counters raised to the values
# given (never lowered).
# -> {entries put back, the event or ''}
REASSERT = _script(
    "reassert",
    """
local now = now_ms()
local nh, nc = tonumber(ARGV[4]), tonumber(ARGV[5])
local changes, back = {}, 0
local i = 7
for _ = 1, nh do
  local f, m = ARGV[i], ARGV[i + 1]
  local hk = ARGV[2] .. f
  if redis.call('HEXISTS', hk, m) == 0 then
    local d = cjson.decode(ARGV[i + 2])
    d.s = now - d.s
    if d.f then d.f = now - d.f end
    redis.call('HSET', hk, m, cjson.encode(d))
    redis.call('SADD', KEYS[1], f)
    changes[#changes + 1] = {k='hold', i=m, d=d}
    back = back + 1
  end
  i = i + 3
end
for _ = 1, nc do
  local f, v = ARGV[i], tonumber(ARGV[i + 1])
  local old = tonumber(redis.call('HGET', KEYS[4], f))
  if not old or old < v then
    local text = string.format('%.17g', v)
    redis.call('HSET', KEYS[4], f, text)
    redis.call('PEXPIRE', KEYS[4], ARGV[6])
    changes[#changes + 1] = {k='fair', i=f, v=text}
    back = back + 1
  end
  i = i + 2
end
while i < #ARGV do
  local q = ARGV[i]
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), q)
  if redis.call('HEXISTS', KEYS[3], q) == 0 then
    local d = cjson.decode(ARGV[i + 1])
    d.a = now - d.a
    if d.d then d.d = now + d.d end
    redis.call('HSET', KEYS[3], q, cjson.encode(d))
    changes[#changes + 1] = {k='wait', i=q, d=d}
    back = back + 1
  end
  i = i + 2
end
if #changes == 0 then return {0, ''} end
local seq = redis.call('INCR', KEYS[5])
local text = cjson.encode({k='board', s=seq, t=now, b=changes})
redis.call('PUBLISH', ARGV[3], text)
return {back, text}
""",
)

# KEYS: loads, loaded, learn:load, learn:service, epoch
# ARGV: epoch candidate, learn ttl ms, load ttl ms, n loads, n loaded,
#       then (field, member, age ms) per load, (field, age ms) per loaded,
#       then (model, load seconds or '', service seconds or '') per learned model
# -> {epoch created 0|1, epoch, loads written, loaded written, learned written}
# Writes only what the store lacks (a live record, a later finish, a learned time stay).
REBUILD = _script(
    "rebuild",
    """
local now = now_ms()
local created = redis.call('SET', KEYS[5], ARGV[1], 'NX') and 1 or 0
local nloads, nloaded = tonumber(ARGV[4]), tonumber(ARGV[5])
local i = 6
local loads, loaded, learned = 0, 0, 0
for _ = 1, nloads do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if (not rec) or cjson.decode(rec).e <= now then
    redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(
      {r=ARGV[i + 1], t=now - tonumber(ARGV[i + 2]), e=now + tonumber(ARGV[3])}))
    loads = loads + 1
  end
  i = i + 3
end
for _ = 1, nloaded do
  loaded = loaded + redis.call('HSETNX', KEYS[2], ARGV[i], now - tonumber(ARGV[i + 1]))
  i = i + 2
end
while i <= #ARGV do
  for k = 1, 2 do
    if ARGV[i + k] ~= '' and redis.call('HSETNX', KEYS[2 + k], ARGV[i], ARGV[i + k]) == 1 then
      redis.call('PEXPIRE', KEYS[2 + k], ARGV[2])
      learned = learned + 1
    end
  end
  i = i + 3
end
return {created, redis.call('GET', KEYS[5]), loads, loaded, learned}
""",
)

# KEYS: loaded, seq
# ARGV: field, pod, model, channel
# -> seq of the event, or 0 when there was nothing to forget
FORGET = _script(
    "forget",
    """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], cjson.encode({k='forget', s=seq, t=now_ms(), p=ARGV[2], m=ARGV[3]}))
return seq
""",
)

SCRIPTS: tuple[Script, ...] = (
    ACQUIRE,
    RELEASE,
    LOADED,
    SNAPSHOT,
    RENEW,
    PENALISE,
    UNPENALISE,
    LEARN,
    UNLOCK,
    QUOTA_ADMIT,
    QUOTA_FINISH,
    FIRST_BYTE,
    POST_WAITER,
    DROP_WAITER,
    RECLAIM,
    BOARD,
    REASSERT,
    REBUILD,
    FORGET,
)
