-- The server time of the node that holds the queue, the clock every other script reads.
-- KEYS: schedulers
--   (any key of the queue: it routes the call to that node on a cluster)
-- ARGV: prefix
-- Returns: {seconds, microseconds}, as TIME does.
return redis.call('TIME')
