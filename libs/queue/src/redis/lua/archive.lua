-- A task the worker holds failed for good: it goes to the archive of dead tasks
-- (trimmed to the newest ARGV[7]).
-- ARGV: 2 id, 3 worker, 4 now ms, 5 error, 6 retried, 7 archive max size.
-- Returns 1, or 0 when the worker does not hold it.
local id = ARGV[2]
local k = tkey(id)
local f = redis.call('HMGET', k, 'state', 'worker', 'queue')
if f[1] ~= 'active' or f[2] ~= ARGV[3] then return 0 end
local q = f[3]
redis.call('ZREM', qkey(q, 'lease'), id)
local archive = qkey(q, 'archive')
redis.call('ZADD', archive, ARGV[4], id)
redis.call('HSET', k, 'state', 'archived', 'error', ARGV[5], 'retried', ARGV[6],
  'archived_at', ARGV[4], 'worker', '')
local extra = redis.call('ZCARD', archive) - tonumber(ARGV[7])
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', archive, 0, extra - 1)) do
    redis.call('DEL', tkey(old))
  end
  redis.call('ZREMRANGEBYRANK', archive, 0, extra - 1)
end
return 1
