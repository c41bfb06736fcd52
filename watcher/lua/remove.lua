-- Remove schedulers. KEYS[1] = schedulers ZSET. ARGV: prefix, ids...
-- A run already in flight finishes; its write-back then finds no scheduler and is dropped.
local P = ARGV[1]
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('DEL', P .. 'scheduler:' .. id) == 1 then
    removed = removed + 1
    redis.call('XADD', P .. 'events', 'MAXLEN', '~', 10000, '*', 'event', 'removed', 'scheduler', id)
  end
  redis.call('ZREM', P .. 'schedulers', id)
end
return removed
