-- The schedulers due now, with what computing their next fire time needs.
-- KEYS: schedulers orphans
-- ARGV: prefix, max count.
-- Returns: server time (ms), the earliest score not returned ("" if none), then 4 fields per
-- scheduler: id, score, spec, slot ("" = the score is the slot).
local schedulers, orphans = KEYS[1], KEYS[2]
local P, limit = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', schedulers, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local after = redis.call('ZRANGEBYSCORE', schedulers, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local out = {now, after[2] or ''}
if #due >= 2 * limit then out[2] = now end
for i = 1, #due, 2 do
  local s = redis.call('HMGET', P .. 'scheduler:' .. due[i], 'spec', 'slot')
  if s[1] then
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    out[#out + 1] = s[1]
    out[#out + 1] = s[2] or ''
  else
    scheduler_missing(schedulers, orphans, due[i], now)
  end
end
return out
