-- Read selected fields of many schedulers in one call (status ranks 100,000 this way).
-- KEYS: schedulers
--   (routes the call to the queue's node; the hashes are built from the prefix)
-- ARGV: prefix, a JSON array of field names, a JSON array of scheduler ids (one argument
-- each: packing thousands of arguments is what costs a client most).
-- Returns: one value per field per id, in order; a scheduler without a hash gives nils.
local P = ARGV[1]
local names, ids = cjson.decode(ARGV[2]), cjson.decode(ARGV[3])
local n = #names
local out = {}
for _, id in ipairs(ids) do
  local values = redis.call('HMGET', P .. 'scheduler:' .. id, unpack(names))
  for f = 1, n do out[#out + 1] = values[f] end
end
return out
