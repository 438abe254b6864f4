-- Adds a task (idempotent: a task whose hash exists, even as a tombstone, is left
-- alone, so the reconcile sweep can call this blindly).
-- ARGV: 2 id, 3 state (pending|scheduled|retry), 4 due ms, 5 queue, 6 target,
-- 7 retried, 8 max_retry, 9 type, 10 unique key or '', 11 deadline ms (0: none)
-- Returns 1 when added, 0 when it existed.
local id = ARGV[2]
local k = tkey(id)
if redis.call('EXISTS', k) == 1 then return 0 end
local state, q, target = ARGV[3], ARGV[5], ARGV[6]
redis.call('HSET', k, 'state', state, 'queue', q, 'target', target, 'retried', ARGV[7],
  'max_retry', ARGV[8], 'type', ARGV[9], 'unique', ARGV[10], 'deadline', ARGV[11],
  'worker', '', 'cancel', '0', 'error', '')
if target ~= '' then redis.call('SADD', P .. 'targets', target) end
if state == 'pending' then
  redis.call('RPUSH', pending_key(q, target), id)
  redis.call('PUBLISH', P .. 'wake', target)
else
  redis.call('ZADD', qkey(q, state), ARGV[4], id)
end
return 1
