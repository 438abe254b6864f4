-- Extends the lease of a task the worker holds.
-- ARGV: 2 id, 3 worker, 4 lease until ms. Returns 1, or 0 when the worker does not
-- hold it (any more).
local k = tkey(ARGV[2])
local f = redis.call('HMGET', k, 'state', 'worker', 'queue')
if f[1] ~= 'active' or f[2] ~= ARGV[3] then return 0 end
redis.call('ZADD', qkey(f[3], 'lease'), ARGV[4], ARGV[2])
return 1
