-- Upsert schedulers, atomically. "~" means "not given, keep".
-- fence is "" (a configuration upsert) or "seq:epoch" (a run writing back: applied only if the
-- scheduler's state epoch is unchanged and no newer run wrote first; else counted in
-- stat:fenced). A changed scope resets the state and takes a new epoch, fencing off old runs.
-- Epochs come from one queue-wide counter, so a scheduler removed and created again never
-- reuses an epoch that a run still in flight could carry.
-- An owner is stored as a short code ("#1"), from the `owners` hash ("=" .. owner -> code,
-- code -> owner, "#" -> the last code given): one file owns a million schedulers, its path
-- is stored once.
-- KEYS: schedulers epochs stat:fenced scheduler_count owners
-- ARGV: prefix, then a JSON array with one array of 14 strings per scheduler (one argument
-- instead of thousands: packing arguments is what costs a client most):
--   id, name, data, spec, next, slot, scope, owner, overlap, limit, attempts, fence, state,
--   first (the first fire time when created, "" = next: "run immediately" passes now)
-- Returns: one word per row: created, updated, unchanged, fenced or missing (a write-back to a
-- scheduler that no longer exists).
local schedulers, epochs, fenced, scheduler_count, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5]
local P = ARGV[1]
local rows = cjson.decode(ARGV[2])
local now = now_ms()
local K = '~'
local out = {}
local epoch, created = nil, 0 -- epochs reserved for this call's new schedulers; how many
-- Fields not stored while at these values (HMGET returns nil for them).
local DEFAULT = {name = DEFAULT_NAME, owner = '', overlap = '0', limit = '0',
  attempts = tostring(DEFAULT_ATTEMPTS), scope = ''}
local codes = {[K] = K, [''] = ''}
local function code_of(owner)
  if not codes[owner] then
    local code = redis.call('HGET', owners, '=' .. owner)
    if not code then
      code = '#' .. redis.call('HINCRBY', owners, '#', 1)
      redis.call('HSET', owners, '=' .. owner, code, code, owner)
    end
    codes[owner] = code
  end
  return codes[owner]
end
for _, row in ipairs(rows) do
  local id, name, data, spec, nxt, slot = row[1], row[2], row[3], row[4], row[5], row[6]
  local scope, owner, overlap, limit, attempts = row[7], row[8], row[9], row[10], row[11]
  local fence, state, first = row[12], row[13], row[14]
  local owner_named = owner -- stored before owners had codes: the name itself
  owner = code_of(owner)
  local key = P .. 'scheduler:' .. id
  local exists = redis.call('EXISTS', key) == 1
  if fence ~= '' then
    if not exists then
      out[#out + 1] = 'missing'
    else
      local cur = redis.call('HMGET', key, 'epoch', 'wseq', 'spec')
      local seq, epoch = string.match(fence, '^(%d+):(%d+)$')
      if cur[1] ~= epoch or tonumber(seq) < tonumber(cur[2] or '0') then
        redis.call('INCR', fenced)
        out[#out + 1] = 'fenced'
      else
        redis.call('HSET', key, 'wseq', seq, 'updated', now)
        if data ~= K then redis.call('HSET', key, 'data', data) end
        if state ~= K then redis.call('HSET', key, 'state', state) end
        if spec ~= K and spec ~= cur[3] then
          redis.call('HSET', key, 'spec', spec)
          set_next(schedulers, key, id, nxt, slot)
        end
        redis.call('HINCRBY', key, 'rev', 1)
        out[#out + 1] = 'updated'
      end
    end
  elseif not exists then
    -- One HSET, and fields at their default value not stored: an idle scheduler stays small,
    -- and a million are created with three commands each.
    if first ~= '' then nxt, slot = first, first end
    if not epoch then epoch = redis.call('INCRBY', epochs, #rows) - #rows end -- a block, once
    epoch = epoch + 1
    -- rev is not stored either: a new scheduler has changed 0 times
    local fields = {'data', data, 'spec', spec, 'epoch', epoch}
    local optional = {{'name', name}, {'state', state ~= '{}' and state or K}, {'scope', scope},
      {'owner', owner}, {'overlap', overlap}, {'limit', limit}, {'attempts', attempts}}
    for _, pair in ipairs(optional) do
      local f, v = pair[1], pair[2]
      if v ~= K and v ~= DEFAULT[f] then
        fields[#fields + 1] = f
        fields[#fields + 1] = v
      end
    end
    if slot ~= nxt then
      fields[#fields + 1] = 'slot'
      fields[#fields + 1] = slot
    end
    redis.call('HSET', key, unpack(fields))
    redis.call('ZADD', schedulers, nxt, id)
    created = created + 1
    out[#out + 1] = 'created'
  else
    local names = {'name', 'data', 'owner', 'overlap', 'limit', 'attempts', 'scope', 'spec'}
    local cur = redis.call('HMGET', key, unpack(names))
    local given = {name, data, owner, overlap, limit, attempts}
    local changed = false
    for f = 1, 6 do
      local old = cur[f] or DEFAULT[names[f]]
      if f == 3 and old == owner_named then old = owner end
      if given[f] ~= K and given[f] ~= old then
        if given[f] == DEFAULT[names[f]] then
          redis.call('HDEL', key, names[f])
        else
          redis.call('HSET', key, names[f], given[f])
        end
        changed = true
      end
    end
    if scope ~= K and scope ~= (cur[7] or '') then
      redis.call('HSET', key, 'scope', scope)
      -- what the old state led to goes with it: its last change, its alerts
      redis.call('HDEL', key, 'state', 'ckey', 'centry', 'alerted', 'down_runs', 'stale')
      redis.call('HSET', key, 'epoch', redis.call('INCR', epochs))
      changed = true
    elseif state ~= K then
      redis.call('HSET', key, 'state', state)
      changed = true
    end
    if spec ~= K and spec ~= cur[8] then
      -- respec: runs fired before it hold nothing back (finish.lua): the new schedule starts
      redis.call('HSET', key, 'spec', spec, 'respec', now)
      set_next(schedulers, key, id, nxt, slot)
      changed = true
    end
    if changed then
      redis.call('HINCRBY', key, 'rev', 1)
      redis.call('HSET', key, 'updated', now)
      out[#out + 1] = 'updated'
    else
      out[#out + 1] = 'unchanged'
    end
  end
end
if created > 0 then redis.call('INCRBY', scheduler_count, created) end -- status counts, no SCAN
return out
