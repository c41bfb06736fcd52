-- Remove schedulers. A run already in flight finishes; its write-back then finds no
-- scheduler and is dropped.
-- KEYS: schedulers events failing changed scheduler_count
-- ARGV: prefix, then the scheduler ids.
-- Returns: the number of schedulers that existed and were removed.
local schedulers, events, failing, changed, scheduler_count =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local P = ARGV[1]
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('DEL', P .. 'scheduler:' .. id) == 1 then
    removed = removed + 1
    redis.call('DECR', scheduler_count)
    event(events, 'event', 'removed', 'scheduler', id)
  end
  redis.call('ZREM', schedulers, id)
  redis.call('ZREM', failing, id)
  redis.call('ZREM', changed, id)
end
return removed
