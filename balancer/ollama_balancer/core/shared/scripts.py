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
(ms), ``a`` affinity key.

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


# KEYS: lease set, index, loads, seq
# ARGV: member, ttl ms, slots, overflow 0|1, cold 0|1, field, pod, model, channel, load ttl ms
# -> {granted 0|1, held, reclaimed, owns load 0|1, seq, now}
ACQUIRE = _script(
    "acquire",
    """
local now = now_ms()
local slots = tonumber(ARGV[3])
local reclaimed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= slots and ARGV[4] ~= '1' then
  local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
  if reclaimed > 0 then
    seq = redis.call('INCR', KEYS[4])
    redis.call('PUBLISH', ARGV[9], cjson.encode(
      {k='rec', s=seq, t=now, p=ARGV[7], m=ARGV[8], h=held, n=slots}))
  end
  return {0, held, reclaimed, 0, seq, now}
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
redis.call('PUBLISH', ARGV[9], cjson.encode(ev))
return {1, held, reclaimed, owns, seq, now}
""",
)

# KEYS: lease set, index, loads, seq
# ARGV: member, field, pod, model, slots, channel
# -> {held, reclaimed, seq, now, aborted load 0|1}
RELEASE = _script(
    "release",
    """
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
redis.call('PUBLISH', ARGV[6], cjson.encode(ev))
return {held, reclaimed, seq, now, aborted}
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

# KEYS: loads, loaded, learn:load, learn:service, epoch
# ARGV: epoch candidate, learn ttl ms, load ttl ms, n loads, n loaded,
#       then (field, member, age ms) per load, (field, age ms) per loaded,
#       then (model, load seconds or '', service seconds or '') per learned model
# -> {epoch created 0|1, epoch, loads written, loaded written, learned written}
# Writes only what the store lacks (a live record, a later finish, a learned time stay).
REASSERT = _script(
    "reassert",
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
    REASSERT,
    FORGET,
)
