"""The Redis job store's state transitions, each one Lua script (atomic on the server, whichever replica runs it).

Work is a Redis Stream read through one consumer group: a replica with a free running slot claims an entry
(XREADGROUP), and the entry stays in the group's pending list, owned by that replica, until the job is settled
(XACK + XDEL). A running replica touches its entries every tick (XCLAIM to itself, which resets their idle time);
an entry idle for `heartbeat` is abandoned and XAUTOCLAIM hands it to another replica, which runs the job again
from the start. Every write a runner makes is fenced by (runner, attempt): a runner that lost its job (claimed by
another replica, or cancelled) cannot store progress or a result, so a job completes once.

Keys (one prefix; the scripts name them from ARGV[1], so this is for one Redis, not Redis Cluster):
  stream            the work: one entry {job: id} per accepted job, until it is settled
  job:ID            hash: kind model params owner status done total created attempt released runner entry
                    input_bytes, then error media_type headers finished
  input:ID          hash: the uploaded files by part name (deleted when the job settles)
  result:ID         the result's bytes (expires with the job)
  active            zset id -> created ms (queued or running: the capacity count)
  finished          zset id -> finished ms (for the TTL); results: zset of those with a result (eviction order)
  sizes             hash id -> result bytes;   counts: hash queued:KIND running:KIND input_bytes result_bytes
  replicas          zset replica -> heartbeat deadline ms;   slots: hash replica -> running slots
  stats             hash job_ms: a job's average run time, for Retry-After
"""

from __future__ import annotations

GROUP = "runners"

PRELUDE = """
local P = ARGV[1]
local STREAM, GROUP, COUNTS = P .. 'stream', 'runners', P .. 'counts'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(value)
  return tonumber(value or '0') or 0
end

local function ensure_group()
  if redis.call('EXISTS', STREAM) == 0 then
    redis.call('XGROUP', 'CREATE', STREAM, GROUP, '0', 'MKSTREAM')
  end
end

-- f = HMGET job status kind entry input_bytes of a queued or running job: it leaves the queue and the counts.
local function leave_queue(id, f)
  redis.call('HINCRBY', COUNTS, f[1] .. ':' .. f[2], -1)
  redis.call('HINCRBY', COUNTS, 'input_bytes', -num(f[4]))
  redis.call('ZREM', P .. 'active', id)
  redis.call('XACK', STREAM, GROUP, f[3])
  redis.call('XDEL', STREAM, f[3])
  redis.call('DEL', P .. 'input:' .. id)
end

-- Everything about a job, whatever its state; returns the status it had (false when there was none).
local function forget(id)
  local f = redis.call('HMGET', P .. 'job:' .. id, 'status', 'kind', 'entry', 'input_bytes')
  if f[1] == 'queued' or f[1] == 'running' then
    leave_queue(id, f)
  end
  local size = redis.call('HGET', P .. 'sizes', id)
  if size then
    redis.call('HINCRBY', COUNTS, 'result_bytes', -num(size))
    redis.call('HDEL', P .. 'sizes', id)
  end
  redis.call('ZREM', P .. 'finished', id)
  redis.call('ZREM', P .. 'results', id)
  redis.call('DEL', P .. 'job:' .. id, P .. 'input:' .. id, P .. 'result:' .. id)
  return f[1]
end

-- Finished jobs past their TTL (a bounded number per call).
local function sweep(now, ttl_ms)
  local expired = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. (now - ttl_ms), 'LIMIT', 0, 100)
  for _, id in ipairs(expired) do
    forget(id)
  end
end

-- Running slots of the replicas that heartbeat, after dropping those that stopped.
local function live_slots(now)
  for _, replica in ipairs(redis.call('ZRANGEBYSCORE', P .. 'replicas', '-inf', now)) do
    redis.call('ZREM', P .. 'replicas', replica)
    redis.call('HDEL', P .. 'slots', replica)
  end
  local total = 0
  for _, n in ipairs(redis.call('HVALS', P .. 'slots')) do
    total = total + num(n)
  end
  return total
end

-- A running job ends as done or failed: out of the queue, kept until its TTL.
local function settle(id, status, error, ttl_ms, now)
  local job = P .. 'job:' .. id
  leave_queue(id, redis.call('HMGET', job, 'status', 'kind', 'entry', 'input_bytes'))
  redis.call('HSET', job, 'status', status, 'error', error, 'finished', now)
  redis.call('ZADD', P .. 'finished', now, id)
  redis.call('PEXPIRE', job, ttl_ms)
end

local function fenced(id, runner, attempt)
  local f = redis.call('HMGET', P .. 'job:' .. id, 'status', 'runner', 'attempt')
  return f[1] == 'running' and f[2] == runner and f[3] == attempt
end
"""

# ARGV: prefix, ttl_ms, own_slots -> {active, slots, job_ms}
LOAD = """
local now = now_ms()
sweep(now, tonumber(ARGV[2]))
local slots = math.max(live_slots(now), tonumber(ARGV[3]))
return {redis.call('ZCARD', P .. 'active'), slots, num(redis.call('HGET', P .. 'stats', 'job_ms'))}
"""

# ARGV: prefix, ttl_ms, own_slots, max_queued, max_input_bytes, id, kind, model, params, owner, total,
#       then part name, data pairs -> {'ok', created_ms} | {'full', active, slots, job_ms} | {'memory', held}
SUBMIT = """
local now = now_ms()
sweep(now, tonumber(ARGV[2]))
local slots = math.max(live_slots(now), tonumber(ARGV[3]))
local active = redis.call('ZCARD', P .. 'active')
if active >= slots + tonumber(ARGV[4]) then
  return {'full', active, slots, num(redis.call('HGET', P .. 'stats', 'job_ms'))}
end
local size = 0
for i = 13, #ARGV, 2 do
  size = size + #ARGV[i]
end
local held = num(redis.call('HGET', COUNTS, 'input_bytes'))
if held + size > tonumber(ARGV[5]) then
  return {'memory', held}
end
ensure_group()
local id, kind = ARGV[6], ARGV[7]
local job = P .. 'job:' .. id
redis.call('HSET', job, 'kind', kind, 'model', ARGV[8], 'params', ARGV[9], 'owner', ARGV[10], 'status', 'queued',
  'done', 0, 'total', ARGV[11], 'created', now, 'attempt', 0, 'released', 0, 'input_bytes', size)
if #ARGV >= 12 then
  redis.call('HSET', P .. 'input:' .. id, unpack(ARGV, 12))
end
redis.call('HSET', job, 'entry', redis.call('XADD', STREAM, '*', 'job', id))
redis.call('ZADD', P .. 'active', now, id)
redis.call('HINCRBY', COUNTS, 'queued:' .. kind, 1)
redis.call('HINCRBY', COUNTS, 'input_bytes', size)
return {'ok', now}
"""

# ARGV: prefix, replica, heartbeat_ms, ttl_ms, max_attempts, error_json (for a job that keeps killing its runners)
# -> {'job', id, entry, attempt, abandoned, kind, model, params, total, {name, data, ...}}
#    | {'none', last stream id} | {'skip'} | {'gave_up', id, kind}
CLAIM = """
ensure_group()
local replica = ARGV[2]
local entry, id, abandoned
local taken = redis.call('XAUTOCLAIM', STREAM, GROUP, replica, ARGV[3], '0-0', 'COUNT', 1)
if #taken[2] > 0 then
  entry, id, abandoned = taken[2][1][1], taken[2][1][2][2], 1
else
  local read = redis.call('XREADGROUP', 'GROUP', GROUP, replica, 'COUNT', 1, 'STREAMS', STREAM, '>')
  if not read then
    local info = redis.call('XINFO', 'STREAM', STREAM)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        return {'none', info[i + 1]}
      end
    end
    return {'none', '0-0'}
  end
  entry, id, abandoned = read[1][2][1][1], read[1][2][1][2][2], 0
end
local job = P .. 'job:' .. id
local f = redis.call('HMGET', job, 'status', 'kind', 'attempt', 'released')
if f[1] ~= 'queued' and f[1] ~= 'running' then
  redis.call('XACK', STREAM, GROUP, entry)
  redis.call('XDEL', STREAM, entry)
  return {'skip'}
end
if abandoned == 1 and num(f[3]) - num(f[4]) >= tonumber(ARGV[5]) then
  settle(id, 'failed', ARGV[6], tonumber(ARGV[4]), now_ms())
  return {'gave_up', id, f[2]}
end
if f[1] == 'queued' then
  redis.call('HINCRBY', COUNTS, 'queued:' .. f[2], -1)
  redis.call('HINCRBY', COUNTS, 'running:' .. f[2], 1)
end
local attempt = redis.call('HINCRBY', job, 'attempt', 1)
redis.call('HSET', job, 'status', 'running', 'runner', replica, 'done', 0)
local h = redis.call('HMGET', job, 'model', 'params', 'total')
return {'job', id, entry, attempt, abandoned, f[2], h[1], h[2], h[3], redis.call('HGETALL', P .. 'input:' .. id)}
"""

# ARGV: prefix, replica, slots, heartbeat_ms, ttl_ms, then (id, entry, attempt, done) per job it runs
# -> {{ids it no longer owns}, {counts as name, value pairs}}
BEAT = """
local now = now_ms()
local replica = ARGV[2]
redis.call('ZADD', P .. 'replicas', now + tonumber(ARGV[4]), replica)
redis.call('HSET', P .. 'slots', replica, ARGV[3])
live_slots(now)
sweep(now, tonumber(ARGV[5]))
ensure_group()
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', STREAM, GROUP)) do
  local fields = {}
  for i = 1, #consumer, 2 do
    fields[consumer[i]] = consumer[i + 1]
  end
  if fields['pending'] == 0 and redis.call('HEXISTS', P .. 'slots', fields['name']) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, fields['name'])
  end
end
local lost = {}
for i = 6, #ARGV, 4 do
  local id = ARGV[i]
  if fenced(id, replica, ARGV[i + 2]) then
    redis.call('HSET', P .. 'job:' .. id, 'done', ARGV[i + 3])
    redis.call('XCLAIM', STREAM, GROUP, replica, 0, ARGV[i + 1], 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return {lost, redis.call('HGETALL', COUNTS)}
"""

# ARGV: prefix, id, replica, attempt, status, ttl_ms, max_result_bytes, elapsed_ms, error_json, media_type,
#       headers_json, body -> 'ok' | 'stale'
FINISH = """
local now = now_ms()
local id, status, ttl = ARGV[2], ARGV[5], tonumber(ARGV[6])
if not fenced(id, ARGV[3], ARGV[4]) then
  return 'stale'
end
local job = P .. 'job:' .. id
local size = #ARGV[12]
if status == 'done' then
  while num(redis.call('HGET', COUNTS, 'result_bytes')) + size > tonumber(ARGV[7]) do
    local oldest = redis.call('ZRANGE', P .. 'results', 0, 0)
    if #oldest == 0 then
      break
    end
    forget(oldest[1])
  end
end
settle(id, status, ARGV[9], ttl, now)
if status == 'done' then
  redis.call('SET', P .. 'result:' .. id, ARGV[12], 'PX', ttl)
  redis.call('HSET', job, 'media_type', ARGV[10], 'headers', ARGV[11], 'done', redis.call('HGET', job, 'total'))
  redis.call('ZADD', P .. 'results', now, id)
  redis.call('HSET', P .. 'sizes', id, size)
  redis.call('HINCRBY', COUNTS, 'result_bytes', size)
end
local average, elapsed = num(redis.call('HGET', P .. 'stats', 'job_ms')), tonumber(ARGV[8])
if average > 0 then
  elapsed = 0.8 * average + 0.2 * elapsed
end
redis.call('HSET', P .. 'stats', 'job_ms', math.floor(elapsed))
return 'ok'
"""

# ARGV: prefix, id, ttl_ms, with_result ('1' or '0')
# -> false | {kind, status, done, total, created, owner, error, media_type, headers, finished, body}
READ = """
local now = now_ms()
sweep(now, tonumber(ARGV[3]))
local id = ARGV[2]
local h = redis.call('HMGET', P .. 'job:' .. id, 'kind', 'status', 'done', 'total', 'created', 'owner', 'error',
  'media_type', 'headers', 'finished')
if not h[2] then
  return false
end
local body = false
if ARGV[4] == '1' and h[2] == 'done' then
  body = redis.call('GET', P .. 'result:' .. id)
end
h[11] = body
return h
"""

# ARGV: prefix, id -> the status the job had, or false
CANCEL = """
return forget(ARGV[2])
"""

# ARGV: prefix, replica, heartbeat_ms, then (id, attempt, entry) per job it hands back
RELEASE = """
local replica = ARGV[2]
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  if fenced(id, replica, ARGV[i + 1]) then
    redis.call('HINCRBY', P .. 'job:' .. id, 'released', 1)
    redis.call('XCLAIM', STREAM, GROUP, replica, 0, ARGV[i + 2], 'IDLE', ARGV[3], 'JUSTID')
  end
end
redis.call('ZREM', P .. 'replicas', replica)
redis.call('HDEL', P .. 'slots', replica)
return 'ok'
"""

SCRIPTS = {
    "load": LOAD,
    "submit": SUBMIT,
    "claim": CLAIM,
    "beat": BEAT,
    "finish": FINISH,
    "read": READ,
    "cancel": CANCEL,
    "release": RELEASE,
}
