-- Record how deliveries went, each only if the caller holds its latest lease (its attempt).
-- sent: done, kept `keep` ms for the history (its payload dropped); retry: due again after
-- its delay, unless that passes its deadline; failed (or a retry past the deadline): kept in
-- outbox:failed, the newest `cap` of them.
-- KEYS: deadlines outbox:failed deliveries
-- ARGV: prefix, keep ms, failed cap, JSON array of {id, attempt, outcome (sent|retry|failed),
-- delay ms, error}.
-- Returns: one code per row: 0 lease lost, 1 sent, 2 to retry, 3 failed.
local deadlines, failed, counts = KEYS[1], KEYS[2], KEYS[3]
local P, keep, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
for _, row in ipairs(cjson.decode(ARGV[4])) do
  local id, attempt, outcome, delay, err = row[1], row[2], row[3], tonumber(row[4]), row[5]
  local key = P .. 'delivery:' .. id
  local d = redis.call('HMGET', key, 'att', 'notifier', 'deadline', 'state')
  if d[1] ~= attempt or d[4] ~= 'sending' then
    out[#out + 1] = 0
  elseif outcome == 'sent' then
    redis.call('ZREM', P .. 'outbox:' .. d[2], id)
    redis.call('ZREM', deadlines, id)
    redis.call('HSET', key, 'state', 'sent', 'done', now, 'error', '')
    redis.call('HDEL', key, 'payload')
    redis.call('PEXPIRE', key, keep)
    redis.call('HINCRBY', counts, d[2] .. ':pending', -1)
    redis.call('HINCRBY', counts, d[2] .. ':sent', 1)
    out[#out + 1] = 1
  elseif outcome == 'retry' and now + delay < tonumber(d[3]) then
    redis.call('ZADD', P .. 'outbox:' .. d[2], now + delay, id)
    redis.call('HSET', key, 'state', 'pending', 'error', err)
    out[#out + 1] = 2
  else
    delivery_failed(P, id, d[2], err, failed, deadlines, counts, cap, now)
    out[#out + 1] = 3
  end
end
return out
