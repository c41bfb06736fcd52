-- Upsert schedulers, atomically. KEYS[1] = schedulers ZSET.
-- ARGV: prefix, count, then 13 fields per scheduler:
--   id, name, data, spec, next, slot, scope, owner, overlap, limit, attempts, fence, state
-- "~" means "not given, keep". fence is "" (a configuration upsert) or "seq:epoch" (a run
-- writing back: applied only if the scheduler's state epoch is unchanged and no newer run
-- wrote first). A changed scope resets the state and bumps the epoch, fencing off old runs.
local P, n = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local K = '~'
local out = {}
local function event(kind, id, rev)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', 10000, '*', 'event', kind, 'scheduler', id, 'rev', rev)
end
for i = 0, n - 1 do
  local b = 2 + i * 13
  local id, name, data, spec, nxt, slot = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  local scope, owner, overlap, limit, attempts = ARGV[b + 7], ARGV[b + 8], ARGV[b + 9], ARGV[b + 10], ARGV[b + 11]
  local fence, state = ARGV[b + 12], ARGV[b + 13]
  local key = P .. 'scheduler:' .. id
  local exists = redis.call('EXISTS', key) == 1
  if fence ~= '' then
    if not exists then
      out[#out + 1] = 'missing'
    else
      local cur = redis.call('HMGET', key, 'epoch', 'wseq', 'spec')
      local seq, epoch = string.match(fence, '^(%d+):(%d+)$')
      if cur[1] ~= epoch or tonumber(seq) < tonumber(cur[2]) then
        out[#out + 1] = 'fenced'
      else
        redis.call('HSET', key, 'wseq', seq, 'updated', now)
        if data ~= K then redis.call('HSET', key, 'data', data) end
        if state ~= K then redis.call('HSET', key, 'state', state) end
        if spec ~= K and spec ~= cur[3] then
          redis.call('HSET', key, 'spec', spec, 'slot', slot)
          redis.call('ZADD', P .. 'schedulers', nxt, id)
        end
        redis.call('HINCRBY', key, 'rev', 1)
        out[#out + 1] = 'updated'
      end
    end
  elseif not exists then
    redis.call('HSET', key, 'name', name, 'data', data, 'state', state ~= K and state or '{}',
      'spec', spec, 'slot', slot, 'scope', scope, 'owner', owner, 'overlap', overlap,
      'limit', limit, 'attempts', attempts, 'epoch', 1, 'rev', 1, 'seq', 0, 'wseq', 0,
      'count', 0, 'skipped', 0, 'fails', 0, 'active', '', 'created', now, 'updated', now)
    redis.call('ZADD', P .. 'schedulers', nxt, id)
    event('created', id, 1)
    out[#out + 1] = 'created'
  else
    local cur = redis.call('HMGET', key, 'name', 'data', 'owner', 'overlap', 'limit', 'attempts', 'scope', 'spec')
    local given = {name, data, owner, overlap, limit, attempts}
    local names = {'name', 'data', 'owner', 'overlap', 'limit', 'attempts'}
    local changed = false
    for f = 1, 6 do
      if given[f] ~= K and given[f] ~= cur[f] then
        redis.call('HSET', key, names[f], given[f])
        changed = true
      end
    end
    if scope ~= K and scope ~= cur[7] then
      redis.call('HSET', key, 'scope', scope, 'state', '{}')
      redis.call('HINCRBY', key, 'epoch', 1)
      changed = true
    elseif state ~= K then
      redis.call('HSET', key, 'state', state)
      changed = true
    end
    if spec ~= K and spec ~= cur[8] then
      redis.call('HSET', key, 'spec', spec, 'slot', slot)
      redis.call('ZADD', P .. 'schedulers', nxt, id)
      changed = true
    end
    if changed then
      local rev = redis.call('HINCRBY', key, 'rev', 1)
      redis.call('HSET', key, 'updated', now)
      event('updated', id, rev)
      out[#out + 1] = 'updated'
    else
      out[#out + 1] = 'unchanged'
    end
  end
end
return out
