-- Take due deliveries of the notifiers this worker knows: each is leased (moved to now +
-- lease in the outbox) so a worker that dies mid-send leaves it to be taken again.
-- KEYS: outbox
-- ARGV: prefix, max count, lease ms, JSON array of the notifier names the caller can send to.
-- Returns: the soonest score left in the outbox ("" if none), then 5 fields per delivery:
-- id, attempt (the lease token: outbox_done.lua accepts only the latest), notifier, payload,
-- stream entry id of its change ("" for an event).
local outbox = KEYS[1]
local P, limit, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local known = {}
for _, name in ipairs(cjson.decode(ARGV[4])) do known[name] = true end
local now = now_ms()
local out = {''}
local taken = 0
-- Deliveries for notifiers other workers know are passed over: look a little further.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', outbox, '-inf', now, 'LIMIT', 0, limit * 4)) do
  if taken >= limit then break end
  local key = P .. 'delivery:' .. id
  local d = redis.call('HMGET', key, 'notifier', 'payload', 'change')
  if not d[1] then
    redis.call('ZREM', outbox, id) -- its record is gone (trimmed or lost): nothing to send
  elseif known[d[1]] then
    local attempt = redis.call('HINCRBY', key, 'att', 1)
    redis.call('HSET', key, 'state', 'sending')
    redis.call('ZADD', outbox, now + lease, id)
    out[#out + 1] = id
    out[#out + 1] = tostring(attempt)
    out[#out + 1] = d[1]
    out[#out + 1] = d[2]
    out[#out + 1] = d[3] or ''
    taken = taken + 1
  end
end
local soonest = redis.call('ZRANGE', outbox, 0, 0, 'WITHSCORES')
out[1] = soonest[2] or ''
return out
