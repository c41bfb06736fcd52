-- The prelude of every script: watcher/scripts.py puts it in front of each one, after the
-- constants it writes from Python (DEFAULT_ATTEMPTS, DEFAULT_NAME, EVENTS_MAX, MARKER_MAX,
-- CHANGED_MAX, and the job states WAIT, DELAYED, ACTIVE, DONE, FAILED), so each value has one
-- home.

-- Redis server time in ms: every worker reads the same clock, whatever its own says.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Append values to an array (a command's arguments, gathered to be sent at once).
local function append(list, ...)
  for _, v in ipairs({...}) do list[#list + 1] = v end
end

-- How long a key named from data may be missing before it counts as lost (not merely still
-- on the node a resharded slot is leaving).
local ORPHAN_MS = 60000

-- Whether a key named from data, found missing, may still arrive (its first miss noted in
-- `orphans` under `member`), or has been missing for ORPHAN_MS and counts as lost.
local function may_arrive(orphans, member, now)
  local first = tonumber(redis.call('ZSCORE', orphans, member) or now)
  if now - first < ORPHAN_MS then
    redis.call('ZADD', orphans, 'NX', now, member)
    redis.call('PEXPIRE', orphans, 2 * ORPHAN_MS) -- members seen once do not stay for ever
    return true
  end
  redis.call('ZREM', orphans, member)
  return false
end

-- A scheduler in `schedulers` without its hash: mid-reshard the hash may not have arrived on
-- the node the script runs on, so it is put off a second at a time; once lost, unscheduled.
local function scheduler_missing(schedulers, orphans, id, now)
  if may_arrive(orphans, 's:' .. id, now) then
    redis.call('ZADD', schedulers, now + 1000, id)
  else
    redis.call('ZREM', schedulers, id)
  end
end

-- Wake idle workers (they BLPOP the marker list). Capped: a wake-up is a hint, not a count.
local function wake(marker)
  redis.call('LPUSH', marker, 1)
  redis.call('LTRIM', marker, 0, MARKER_MAX - 1)
end

-- Append to the capped events stream; the arguments are field, value pairs.
local function event(events, ...)
  redis.call('XADD', events, 'MAXLEN', '~', EVENTS_MAX, '*', ...)
end

-- Move a finished job out of sight: kept for `keep` ms, listed among the newest finished.
local function retire(job_key, jid, keep, finished, cap)
  redis.call('PEXPIRE', job_key, keep)
  redis.call('LPUSH', finished, jid)
  redis.call('LTRIM', finished, 0, cap - 1)
end

-- A run of scheduler `id` failed: count it in a row, and rank it among the failing (status
-- shows the most failing first without reading every scheduler).
local function fail_once(scheduler_key, failing, id)
  redis.call('ZADD', failing, redis.call('HINCRBY', scheduler_key, 'fails', 1), id)
end

-- A run of scheduler `id` succeeded: its failures in a row are over.
local function recovered(scheduler_key, failing, id)
  if redis.call('HDEL', scheduler_key, 'fails') == 1 then redis.call('ZREM', failing, id) end
end

-- Move a scheduler to its next fire time; the slot (the time without jitter) is stored only
-- when it differs from the score. `stored`: whether a slot is stored now (nil: unknown).
local function set_next(schedulers, key, id, nxt, slot, stored)
  redis.call('ZADD', schedulers, nxt, id)
  if slot ~= nxt then
    redis.call('HSET', key, 'slot', slot)
  elseif stored ~= false then
    redis.call('HDEL', key, 'slot')
  end
end

-- The host of a URL in a scheduler's data JSON (compact, as the queue writes it): lower case,
-- without user info or port; '' when there is none.
local function host_of(data)
  local authority = string.match(data, '"url":"%a[%w+.-]*://([^/?#"]*)')
  if not authority then return '' end
  authority = string.gsub(authority, '^.*@', '')
  if string.sub(authority, 1, 1) == '[' then
    authority = string.match(authority, '^%[[^%]]*%]') or authority
  else
    authority = string.gsub(authority, ':%d*$', '')
  end
  return string.lower(authority)
end

-- A run on host `h` ended or was given back: its slot is free, so the host's longest parked
-- run (take.lua parks runs beyond the host's concurrency) goes to the front of wait.
local function free_slot(prefix, h, jid, wait, marker)
  local hk = prefix .. 'host:' .. h
  redis.call('ZREM', hk .. ':slots', jid)
  local parked = redis.call('LPOP', hk .. ':waiting')
  if parked then
    redis.call('LPUSH', wait, parked)
    wake(marker)
  end
end

-- The budget of host h from the `hosts` hash: its own entry, else the nearest *.domain
-- wildcard, else default; {interval, burst, conc} (0: no limit), or false when none.
local function host_budget(hosts, h)
  local text = redis.call('HGET', hosts, h)
  local rest = h
  while not text do
    local dot = string.find(rest, '.', 1, true)
    if not dot then break end
    rest = string.sub(rest, dot + 1)
    text = redis.call('HGET', hosts, '*.' .. rest)
  end
  text = text or redis.call('HGET', hosts, 'default')
  if not text then return false end
  local interval, burst, conc = string.match(text, '^(%d+) (%d+) (%d+)$')
  return {interval = tonumber(interval), burst = tonumber(burst), conc = tonumber(conc)}
end

-- Put a message in the outbox for each notifier: one delivery record each, due now in its
-- notifier's own `outbox:<name>` (so a notifier no worker knows holds up no other), sent by
-- any worker that knows the notifier (outbox_take.lua) until sent or past its deadline (the
-- `deadlines` ZSET, swept by outbox_take.lua whatever the notifier).
-- notify: an array of {name, ms to deliver within}; change: the stream entry id or ''. A
-- change's delivery id is "<entry id>/<notifier>" (the history finds it from the entry), an
-- event's "e<n>".
local function deliver(P, deadlines, counts, ids_key, notify, resource, event, payload, change, now)
  local seen = {}
  for _, target in ipairs(notify) do
    local name, within = target[1], tonumber(target[2])
    if not seen[name] then
      seen[name] = true
      local id = change ~= '' and (change .. '/' .. name) or ('e' .. redis.call('INCR', ids_key))
      redis.call('HSET', P .. 'delivery:' .. id, 'notifier', name, 'resource', resource,
        'event', event, 'payload', payload, 'change', change, 'state', 'pending', 'att', 0,
        'created', now, 'deadline', now + within)
      redis.call('ZADD', P .. 'outbox:' .. name, now, id)
      redis.call('ZADD', deadlines, now + within, id)
      redis.call('HINCRBY', counts, name .. ':pending', 1)
    end
  end
end

-- A delivery fails for good: out of its notifier's outbox, kept in `failed` (the newest
-- `cap`; older ones are deleted), counted.
local function delivery_failed(P, id, name, err, failed, deadlines, counts, cap, now)
  local key = P .. 'delivery:' .. id
  redis.call('ZREM', P .. 'outbox:' .. name, id)
  redis.call('ZREM', deadlines, id)
  redis.call('HSET', key, 'state', 'failed', 'done', now, 'error', err)
  redis.call('ZADD', failed, now, id)
  redis.call('HINCRBY', counts, name .. ':pending', -1)
  redis.call('HINCRBY', counts, name .. ':failed', 1)
  for _, old in ipairs(redis.call('ZRANGE', failed, 0, -cap - 1)) do
    local gone = redis.call('HGET', P .. 'delivery:' .. old, 'notifier')
    if gone then redis.call('HINCRBY', counts, gone .. ':failed', -1) end
    redis.call('DEL', P .. 'delivery:' .. old)
  end
  redis.call('ZREMRANGEBYRANK', failed, 0, -cap - 1)
end

-- An event of a resource (down, recovered, stale, changing) for its alert's notifiers:
-- `alert` is what the runner passed ({notify = ..., message = {...}}), `why` a sentence.
local function alert_event(P, deadlines, counts, ids_key, alert, resource, event, why, now)
  local message = alert.message or {}
  message.event, message.time, message.summary = event, now / 1000, why
  deliver(P, deadlines, counts, ids_key, alert.notify or {}, resource, event,
    cjson.encode(message), '', now)
end
