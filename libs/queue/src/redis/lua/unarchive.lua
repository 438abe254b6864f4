-- An operator retries a dead task: out of the archive, back in line with no
-- retries used. ARGV: 2 id. Returns 1, or 0 when it is not archived.
local id = ARGV[2]
local k = tkey(id)
local f = redis.call('HMGET', k, 'state', 'queue', 'target')
if f[1] ~= 'archived' then return 0 end
redis.call('ZREM', qkey(f[2], 'archive'), id)
redis.call('HSET', k, 'state', 'pending', 'retried', 0, 'error', '', 'cancel', '0')
redis.call('HDEL', k, 'archived_at')
redis.call('RPUSH', pending_key(f[2], f[3]), id)
redis.call('PUBLISH', P .. 'wake', f[3])
return 1
