-- Read many schedulers whole in one call: each one's hash and its next fire time.
-- KEYS: schedulers
-- ARGV: prefix, a JSON array of scheduler ids.
-- Returns: 2 entries per id: the hash as a flat field, value list (empty when gone), and
-- the score in `schedulers` (nil when not scheduled: ended, or gone).
local schedulers = KEYS[1]
local P = ARGV[1]
local out = {}
for _, id in ipairs(cjson.decode(ARGV[2])) do
  out[#out + 1] = redis.call('HGETALL', P .. 'scheduler:' .. id)
  out[#out + 1] = redis.call('ZSCORE', schedulers, id)
end
return out
