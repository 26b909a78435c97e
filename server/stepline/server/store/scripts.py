"""The Redis store's Lua scripts: each guarded change to a run is one of these, run atomically.

Each script touches only one run's keys (same hash slot), so it also runs under Redis Cluster.
Scripts check everything before their first write, so one that returns early wrote nothing.
Floats (times) arrive as `repr()` strings from Python, so Redis and Python agree on them.
"""

from __future__ import annotations

from ..model import RunStatus

__all__ = [
    "ACQUIRE",
    "CREATE",
    "DELETE",
    "DROP_FIRED_TIMERS",
    "EVENT_FIELD",
    "RELEASE",
    "RENEW",
    "REQUEST_CANCEL",
    "RUN_FIELDS",
    "WRITE",
]

# The one field of an event stream entry: the event's JSON without its sequence.
EVENT_FIELD = "e"
# The run fields some scripts return, in this order.
RUN_FIELDS = ["snap", "ver", "seq", "cancel", "lease_owner", "lease_until"]

_PRELUDE = (
    "local RUN_FIELDS = {"
    + ", ".join(f"'{name}'" for name in RUN_FIELDS)
    + "}"
    + """
local function run_fields(key)
  return redis.call('HMGET', key, unpack(RUN_FIELDS))
end
local function lease_live(owner, lease_until, now)
  return owner ~= '' and tonumber(lease_until) >= tonumber(now)
end
"""
)

# KEYS: run hash, events stream.
# ARGV: snap, status, workflow_id, resource_id, created_at, updated_at, request_id,
#       lease owner ('' for none), lease_until.
# A run created held starts at fence 1, as if its creator had acquired it.
CREATE = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, unpack(run_fields(KEYS[1]))}
end
-- A stream left behind by anything would make XADD of 0-1 fail later.
redis.call('DEL', KEYS[2])
local held = ARGV[8] ~= ''
redis.call('HSET', KEYS[1],
  'snap', ARGV[1], 'status', ARGV[2], 'workflow_id', ARGV[3], 'resource_id', ARGV[4],
  'created_at', ARGV[5], 'updated_at', ARGV[6], 'request_id', ARGV[7],
  'ver', 1, 'seq', 0, 'fence', held and 1 or 0, 'lease_owner', ARGV[8],
  'lease_until', held and ARGV[9] or 0, 'cancel', 0)
return {1, unpack(run_fields(KEYS[1]))}
"""
)

# KEYS: run hash, events stream.
# ARGV: guard kind ('fence' | 'version'), guard value, now, release ('1' | '0'),
#       settled ('1' | '0'), snap, status, updated_at, request_id,
#       retention ms of a finished run ('0': kept), events kept per run ('0': all),
#       finished ('1' | '0'), event JSON...
# A finished run's two keys expire together after the retention; any other write keeps them.
WRITE = (
    _PRELUDE
    + f"local EVENT_FIELD = '{EVENT_FIELD}'"
    + """
local run = redis.call('HMGET', KEYS[1], 'ver', 'seq', 'fence', 'lease_owner', 'lease_until',
  'cancel')
if not run[1] then return {'missing'} end
local unheld = ARGV[1] == 'version'
if unheld then
  if run[1] ~= ARGV[2] then return {'version_moved'} end
  if lease_live(run[4], run[5], ARGV[3]) then return {'leased'} end
elseif run[3] ~= ARGV[2] or run[4] == '' then
  -- A released lease keeps its fence number, so the owner is checked too.
  return {'stale_fence'}
end
local seq = tonumber(run[2])
for i = 13, #ARGV do
  seq = seq + 1
  redis.call('XADD', KEYS[2], '0-' .. seq, EVENT_FIELD, ARGV[i])
end
local keep = tonumber(ARGV[11])
if keep > 0 and seq > keep then
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. (seq - keep + 1))
end
-- A finished run's log is written no more: store it at its exact size (a new stream node is
-- allocated at stream-node-max-bytes, 4 KiB by default, whatever it holds). Blocked readers
-- are served after the script, from the restored key.
if ARGV[12] == '1' then
  local image = redis.call('DUMP', KEYS[2])
  if image then
    redis.call('DEL', KEYS[2])
    redis.call('RESTORE', KEYS[2], 0, image)
  end
end
if ARGV[12] == '1' and ARGV[10] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
local ver = tonumber(run[1]) + 1
redis.call('HSET', KEYS[1], 'snap', ARGV[6], 'status', ARGV[7], 'updated_at', ARGV[8],
  'request_id', ARGV[9], 'ver', ver, 'seq', seq)
-- An unheld write also clears an expired lease, so that holder cannot write over it later.
if unheld or ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'lease_owner', '', 'lease_until', 0)
end
-- A cancel request targets the execution in progress; once the run settles it is moot.
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'cancel', 0) end
return {'ok', ver, seq, run[6]}
"""
)

_ACQUIRABLE = [status.value for status in RunStatus if status is RunStatus.PENDING or status.active]

# KEYS: run hash. ARGV: owner, now, lease_until.
ACQUIRE = (
    _PRELUDE
    + "local ACQUIRABLE = {"
    + ", ".join(f"['{status}'] = true" for status in _ACQUIRABLE)
    + "}"
    + """
local run = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'lease_until')
if not run[1] or not ACQUIRABLE[run[1]] or lease_live(run[2], run[3], ARGV[2]) then
  return {0}
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[1], 'lease_until', ARGV[3])
return {fence, unpack(run_fields(KEYS[1]))}
"""
)

# KEYS: run hash. ARGV: fence, lease_until.
# Returns 0 (stale fence), 1 (renewed) or 2 (renewed, and a cancel is requested).
RENEW = """
local run = redis.call('HMGET', KEYS[1], 'fence', 'lease_owner', 'cancel')
if run[1] ~= ARGV[1] or not run[2] or run[2] == '' then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
if run[3] == '1' then return 2 end
return 1
"""

# KEYS: run hash. ARGV: fence.
RELEASE = """
if redis.call('HGET', KEYS[1], 'fence') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'lease_owner', '', 'lease_until', 0)
end
return 0
"""

# KEYS: run hash. ARGV: now, channel, run id.
REQUEST_CANCEL = (
    _PRELUDE
    + """
local run = redis.call('HMGET', KEYS[1], 'lease_owner', 'lease_until')
if not run[1] or not lease_live(run[1], run[2], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
)

# KEYS: run hash, events stream. Returns the ids the run is indexed under.
DELETE = """
local ids = redis.call('HMGET', KEYS[1], 'workflow_id', 'resource_id')
if not ids[1] then return {0} end
redis.call('DEL', KEYS[1], KEYS[2])
return {1, ids[1], ids[2]}
"""

# KEYS: timers sorted set. ARGV: now, run id...
# Drops the given timers only if still due: a run that woke and slept again meanwhile keeps
# its new timer.
DROP_FIRED_TIMERS = """
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 1
"""
