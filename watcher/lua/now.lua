-- The server time of the node that holds the queue, the clock every other script reads.
-- KEYS[1] = any key of the queue: it routes the call to that node on a cluster.
return redis.call('TIME')
