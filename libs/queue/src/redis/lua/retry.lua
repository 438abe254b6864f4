-- A failed attempt of a task the worker holds waits out its backoff.
-- ARGV: 2 id, 3 worker, 4 due ms, 5 retried, 6 error. Returns 1, or 0 when the
-- worker does not hold it.
local id = ARGV[2]
local k = tkey(id)
local f = redis.call('HMGET', k, 'state', 'worker', 'queue')
if f[1] ~= 'active' or f[2] ~= ARGV[3] then return 0 end
redis.call('ZREM', qkey(f[3], 'lease'), id)
redis.call('ZADD', qkey(f[3], 'retry'), ARGV[4], id)
redis.call('HSET', k, 'state', 'retry', 'retried', ARGV[5], 'error', ARGV[6], 'worker', '')
return 1
