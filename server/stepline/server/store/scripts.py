"""The Redis store's Lua scripts: each guarded change to a run is one of these, run atomically.

Each script touches only one run's keys (same hash slot), so it also runs under Redis Cluster.
Scripts check everything before their first write, so one that returns early wrote nothing.
Floats (times) arrive as `repr()` strings from Python, so Redis and Python agree on them.
"""

from __future__ import annotations

from ..model import RunStatus

__all__ = [
    "ACQUIRE",
    "COMPACT",
    "COMPACTED",
    "COMPACT_READ",
    "CREATE",
    "DELETE",
    "DROP_FIRED_TIMERS",
    "EVENT_FIELD",
    "EXPAND",
    "LAYOUT",
    "READ",
    "RELEASE",
    "RENEW",
    "REQUEST_CANCEL",
    "RUN_FIELDS",
    "WRITE",
]

# The one field of an event stream entry: the event's JSON without its sequence.
EVENT_FIELD = "e"
# The run fields some scripts return, in this order. `layout` is absent from a run written
# before step records left `snap` (its steps and iterations are inside `snap`); `ikeys` lists
# the encoded step ids of the run's foreach iteration hashes, space-separated.
RUN_FIELDS = ["snap", "ver", "seq", "cancel", "lease_owner", "lease_until", "layout", "ikeys"]
# The `layout` of a run whose records are hashes of their own, its nested workflows' too
# (as "child.step"). "2" (phase 1) kept nested workflows' records inside `snap`; such a run
# reads as it is and is written whole (`StoredRun.records_apart`), which moves them out.
LAYOUT = "3"
# The `layout` of a finished run compacted by housekeeping: its snapshot, records and events
# are one deflated blob (`compacted.py`) in the string key `<run key>:z`.
COMPACTED = "4"
_FINISHED = [status.value for status in RunStatus if status.finished]

_PRELUDE = (
    f"local LAYOUT = '{LAYOUT}'\n"
    f"local COMPACTED = '{COMPACTED}'\n"
    "local FINISHED = {" + ", ".join(f"['{status}'] = true" for status in _FINISHED) + "}\n"
    "local RUN_FIELDS = {"
    + ", ".join(f"'{name}'" for name in RUN_FIELDS)
    + "}"
    + """
local function run_fields(key)
  return redis.call('HMGET', key, unpack(RUN_FIELDS))
end
-- A compacted run keeps no lease fields at their defaults: a missing owner holds nothing.
local function lease_live(owner, lease_until, now)
  return owner and owner ~= '' and tonumber(lease_until) >= tonumber(now)
end
-- The iteration hashes a run's `ikeys` field names (they share the run's hash tag).
local function item_keys(run_key, listed)
  local keys = {}
  if listed then
    for enc in string.gmatch(listed, '%S+') do keys[#keys + 1] = run_key .. ':items:' .. enc end
  end
  return keys
end
-- The whole run: its fields (RUN_FIELDS), its step records (HGETALL), per foreach the
-- encoded step id and its iteration records (HGETALL), flat, and a compacted run's blob.
local function read_run(run_key, steps_key)
  local fields = run_fields(run_key)
  if fields[7] == COMPACTED then
    return {fields, {}, {}, redis.call('GET', run_key .. ':z')}
  end
  local groups = {}
  if fields[8] then
    for enc in string.gmatch(fields[8], '%S+') do
      groups[#groups + 1] = enc
      groups[#groups + 1] = redis.call('HGETALL', run_key .. ':items:' .. enc)
    end
  end
  return {fields, redis.call('HGETALL', steps_key), groups, false}
end
-- Store records from ARGV[p]: full ('1' | '0'), ikeys, step count n, n (step id, JSON)
-- pairs, foreach count g, then per foreach its count m and m (index, JSON) pairs, written to
-- KEYS[first + j - 1] for the j-th. A full write first removes every record the run had.
local function store_records(run_key, steps_key, p, first)
  if ARGV[p] == '1' then
    redis.call('DEL', steps_key)
    for _, key in ipairs(item_keys(run_key, redis.call('HGET', run_key, 'ikeys'))) do
      redis.call('DEL', key)
    end
  end
  redis.call('HSET', run_key, 'ikeys', ARGV[p + 1], 'layout', LAYOUT)
  local n = tonumber(ARGV[p + 2])
  p = p + 3
  for _ = 1, n do
    redis.call('HSET', steps_key, ARGV[p], ARGV[p + 1])
    p = p + 2
  end
  local groups = tonumber(ARGV[p])
  p = p + 1
  for j = 1, groups do
    local m = tonumber(ARGV[p])
    p = p + 1
    for _ = 1, m do
      redis.call('HSET', KEYS[first + j - 1], ARGV[p], ARGV[p + 1])
      p = p + 2
    end
  end
end
-- Every key of the run: header, events, steps, and the iteration hashes `ikeys` names.
local function all_keys(run_key, events_key, steps_key)
  local keys = item_keys(run_key, redis.call('HGET', run_key, 'ikeys'))
  keys[#keys + 1] = run_key
  keys[#keys + 1] = events_key
  keys[#keys + 1] = steps_key
  return keys
end
"""
)

# KEYS: run hash, events stream, steps hash, the iteration hash of each foreach with records.
# ARGV: snap, status, workflow_id, resource_id, created_at, updated_at, request_id,
#       lease owner ('' for none), lease_until, then the records (see `store_records`, full).
# A run created held starts at fence 1, as if its creator had acquired it.
# Returns {1} when created (the caller has the run), else {0, the existing run (`read_run`)}.
CREATE = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, read_run(KEYS[1], KEYS[3])}
end
-- A stream left behind by anything would make XADD of 0-1 fail later.
redis.call('DEL', KEYS[2], KEYS[3])
local held = ARGV[8] ~= ''
redis.call('HSET', KEYS[1],
  'snap', ARGV[1], 'status', ARGV[2], 'workflow_id', ARGV[3], 'resource_id', ARGV[4],
  'created_at', ARGV[5], 'updated_at', ARGV[6], 'request_id', ARGV[7],
  'ver', 1, 'seq', 0, 'fence', held and 1 or 0, 'lease_owner', ARGV[8],
  'lease_until', held and ARGV[9] or 0, 'cancel', 0)
store_records(KEYS[1], KEYS[3], 10, 4)
return {1}
"""
)

# KEYS: run hash, steps hash. Returns the run (`read_run`); its `ver` is nil when the run
# does not exist.
READ = (
    _PRELUDE
    + """
return read_run(KEYS[1], KEYS[2])
"""
)

# KEYS: run hash, events stream, steps hash, the iteration hash of each foreach the write
#       carries records of.
# ARGV: guard kind ('fence' | 'version'), guard value, now, release ('1' | '0'),
#       settled ('1' | '0'), snap, status, updated_at, request_id,
#       retention ms of a finished run ('0': kept), events kept per run ('0': all),
#       finished ('1' | '0'), hold owner ('' for none), hold lease_until, event count e,
#       e event JSONs, then the records (see `store_records`): those the write changed, or
#       all of them (full).
# A finished run's keys expire together after the retention; any other write keeps them.
# An unheld write with a hold owner takes the lease as ACQUIRE does (the fence goes up).
# Returns {'ok', version, sequence, cancel flag, fence taken or 0} or {reason}; 'compacted'
# comes after the guards, so the write may go on once the run is expanded.
WRITE = (
    _PRELUDE
    + f"local EVENT_FIELD = '{EVENT_FIELD}'"
    + """
local run = redis.call('HMGET', KEYS[1], 'ver', 'seq', 'fence', 'lease_owner', 'lease_until',
  'cancel', 'layout')
if not run[1] then return {'missing'} end
local unheld = ARGV[1] == 'version'
if unheld then
  if run[1] ~= ARGV[2] then return {'version_moved'} end
  if lease_live(run[4], run[5], ARGV[3]) then return {'leased'} end
elseif run[3] ~= ARGV[2] or not run[4] or run[4] == '' then
  -- A released lease keeps its fence number, so the owner is checked too.
  return {'stale_fence'}
end
-- A compacted run is expanded first (EXPAND), by the caller: Lua cannot inflate its blob.
if run[7] == COMPACTED then return {'compacted'} end
local seq = tonumber(run[2])
local count = tonumber(ARGV[15])
for i = 16, 15 + count do
  seq = seq + 1
  redis.call('XADD', KEYS[2], '0-' .. seq, EVENT_FIELD, ARGV[i])
end
store_records(KEYS[1], KEYS[3], 16 + count, 4)
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
local expires = ARGV[12] == '1' and ARGV[10] ~= '0'
for _, key in ipairs(all_keys(KEYS[1], KEYS[2], KEYS[3])) do
  if expires then
    redis.call('PEXPIRE', key, ARGV[10])
  else
    redis.call('PERSIST', key)
  end
end
local ver = tonumber(run[1]) + 1
redis.call('HSET', KEYS[1], 'snap', ARGV[6], 'status', ARGV[7], 'updated_at', ARGV[8],
  'request_id', ARGV[9], 'ver', ver, 'seq', seq)
-- An unheld write also clears an expired lease, so that holder cannot write over it later.
if unheld or ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'lease_owner', '', 'lease_until', 0)
end
local fence = 0
if unheld and ARGV[13] ~= '' then
  fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
  redis.call('HSET', KEYS[1], 'lease_owner', ARGV[13], 'lease_until', ARGV[14])
end
-- A cancel request targets the execution in progress; once the run settles it is moot.
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'cancel', 0) end
return {'ok', ver, seq, run[6] or '0', fence}
"""
)

_ACQUIRABLE = [status.value for status in RunStatus if status is RunStatus.PENDING or status.active]

# KEYS: run hash, steps hash. ARGV: owner, now, lease_until.
# Returns {0} or {fence, the run (`read_run`)}.
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
return {fence, read_run(KEYS[1], KEYS[2])}
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

# KEYS: run hash, events stream, steps hash. Removes every key of the run (its iteration
# hashes and a compacted run's blob too). Returns the ids the run is indexed under.
DELETE = (
    _PRELUDE
    + """
local ids = redis.call('HMGET', KEYS[1], 'workflow_id', 'resource_id')
if not ids[1] then return {0} end
redis.call('DEL', KEYS[1] .. ':z', unpack(all_keys(KEYS[1], KEYS[2], KEYS[3])))
return {1, ids[1], ids[2]}
"""
)

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

# KEYS: run hash, events stream, steps hash. ARGV: the most stream entries and records a run
# may have to be compacted.
# Returns {0} unless the run exists, is finished, of layout 2 and not bigger than that; else
# {1, the run (`read_run`), every stream entry (XRANGE)}.
COMPACT_READ = (
    _PRELUDE
    + """
local run = redis.call('HMGET', KEYS[1], 'status', 'layout', 'ikeys')
if not run[1] or not FINISHED[run[1]] or run[2] ~= LAYOUT then return {0} end
local size = redis.call('XLEN', KEYS[2]) + redis.call('HLEN', KEYS[3])
for _, key in ipairs(item_keys(KEYS[1], run[3])) do size = size + redis.call('HLEN', key) end
if size > tonumber(ARGV[1]) then return {0} end
return {1, read_run(KEYS[1], KEYS[3]), redis.call('XRANGE', KEYS[2], '-', '+')}
"""
)

# KEYS: run hash, events stream, steps hash, blob. ARGV: the version read, the blob.
# Only if the run is still finished, of layout 2 and at that version: stores the blob,
# deletes the stream and the record hashes, and writes the header again without `snap` and
# `ikeys`, without the lease and cancel fields at their defaults, with `layout` COMPACTED.
# (A hash that outgrew the small encoding keeps the big one when fields leave it, so the
# header is written anew.) Both keys get the header's remaining time to live.
# Returns 1 when compacted, else 0.
COMPACT = (
    _PRELUDE
    + """
local run = redis.call('HMGET', KEYS[1], 'ver', 'layout', 'status', 'lease_owner', 'cancel',
  'ikeys')
if run[1] ~= ARGV[1] or run[2] ~= LAYOUT or not FINISHED[run[3]] then return 0 end
local dropped = {snap = true, ikeys = true, layout = true}
if run[4] == '' then
  dropped.lease_owner = true
  dropped.lease_until = true
end
if run[5] == '0' then dropped.cancel = true end
local ttl = redis.call('PTTL', KEYS[1])
local fields = redis.call('HGETALL', KEYS[1])
local kept = {'layout', COMPACTED}
for i = 1, #fields, 2 do
  if not dropped[fields[i]] then
    kept[#kept + 1] = fields[i]
    kept[#kept + 1] = fields[i + 1]
  end
end
local doomed = item_keys(KEYS[1], run[6])
doomed[#doomed + 1] = KEYS[1]
doomed[#doomed + 1] = KEYS[2]
doomed[#doomed + 1] = KEYS[3]
redis.call('DEL', unpack(doomed))
redis.call('HSET', KEYS[1], unpack(kept))
redis.call('SET', KEYS[4], ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
return 1
"""
)

# KEYS: run hash, events stream, steps hash, blob, the iteration hash of each foreach with
#       records.
# ARGV: the version the blob was read at, snap, first sequence, event count e, e event
#       JSONs, then the records (see `store_records`, full).
# Only if the run is still compacted at that version: restores layout 2 as it was before
# COMPACT (stream entries `0-<sequence>`, records, `snap`, default fields) with the header's
# time to live, and deletes the blob. Returns 1 when expanded, else 0.
EXPAND = (
    _PRELUDE
    + f"local EVENT_FIELD = '{EVENT_FIELD}'"
    + """
local run = redis.call('HMGET', KEYS[1], 'ver', 'layout')
if run[1] ~= ARGV[1] or run[2] ~= COMPACTED then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
local first = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
for i = 0, count - 1 do
  redis.call('XADD', KEYS[2], '0-' .. (first + i), EVENT_FIELD, ARGV[5 + i])
end
store_records(KEYS[1], KEYS[3], 5 + count, 5)
redis.call('HSET', KEYS[1], 'snap', ARGV[2])
redis.call('HSETNX', KEYS[1], 'lease_owner', '')
redis.call('HSETNX', KEYS[1], 'lease_until', 0)
redis.call('HSETNX', KEYS[1], 'cancel', 0)
redis.call('DEL', KEYS[4])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for _, key in ipairs(all_keys(KEYS[1], KEYS[2], KEYS[3])) do
    redis.call('PEXPIRE', key, ttl)
  end
end
return 1
"""
)
