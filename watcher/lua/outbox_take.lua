-- Take due deliveries of the notifiers this worker knows, each from its notifier's own
-- `outbox:<name>`, leased (moved to now + lease) so a worker that dies mid-send leaves it to
-- be taken again. First, deliveries past their deadline fail for good, whatever their
-- notifier: a notifier no worker knows any more still ends in `failed`, shown.
-- KEYS: deadlines outbox:failed deliveries
-- ARGV: prefix, max count, JSON array of [name, lease ms] of each notifier the caller can send
-- to (a lease outlasts that notifier's longest attempt: a worker SIGKILLed mid-send holds its
-- deliveries no longer than their own notifier needs), failed cap.
-- Returns: 5 fields per delivery: id, attempt (the lease token: outbox_done.lua accepts only
-- the latest), notifier, payload, stream entry id of its change ("" for an event).
local deadlines, failed, counts = KEYS[1], KEYS[2], KEYS[3]
local P, limit, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local now = now_ms()
for _, id in ipairs(redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, 100)) do
  local d = redis.call('HMGET', P .. 'delivery:' .. id, 'notifier', 'error')
  if d[1] then
    local why = 'not delivered within its deadline' .. (d[2] and d[2] ~= '' and (': ' .. d[2]) or '')
    delivery_failed(P, id, d[1], why, failed, deadlines, counts, cap, now)
  else
    redis.call('ZREM', deadlines, id) -- its record is gone (trimmed or lost)
  end
end
local out = {}
local taken = 0
for _, pair in ipairs(cjson.decode(ARGV[3])) do
  if taken >= limit then break end
  local name, lease = pair[1], tonumber(pair[2])
  local due_key = P .. 'outbox:' .. name
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, limit - taken)) do
    local key = P .. 'delivery:' .. id
    local d = redis.call('HMGET', key, 'payload', 'change')
    if not d[1] then
      redis.call('ZREM', due_key, id) -- its record is gone: nothing to send
      redis.call('HINCRBY', counts, name .. ':pending', -1)
    else
      local attempt = redis.call('HINCRBY', key, 'att', 1)
      redis.call('HSET', key, 'state', 'sending')
      redis.call('ZADD', due_key, now + lease, id)
      out[#out + 1] = id
      out[#out + 1] = tostring(attempt)
      out[#out + 1] = name
      out[#out + 1] = d[1]
      out[#out + 1] = d[2] or ''
      taken = taken + 1
    end
  end
end
return out
