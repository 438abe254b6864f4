-- Lease recovery: tasks whose lease expired (their worker stopped heartbeating) go
-- back in line as a retry, to the archive when their retries are used up, or end
-- cancelled when a stop had been asked for. Any worker runs it.
-- ARGV: 2 now ms, 3 max per queue, 4 tombstone ttl ms, 5.. queue names.
-- Returns {id, outcome ('retry'|'failed'|'cancelled'), retried, error} per task.
local now = tonumber(ARGV[2])
local out = {}
for i = 5, #ARGV do
  local q = ARGV[i]
  local lease = qkey(q, 'lease')
  local expired = redis.call('ZRANGEBYSCORE', lease, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(expired) do
    redis.call('ZREM', lease, id)
    local k = tkey(id)
    local f = redis.call('HMGET', k, 'state', 'worker', 'retried', 'max_retry', 'cancel', 'unique')
    if f[1] == 'active' then
      local retried = tonumber(f[3] or '0') or 0
      local max = tonumber(f[4] or '0') or 0
      local err = 'lease expired: worker ' .. (f[2] or '?') .. ' stopped heartbeating'
      if f[5] == '1' then
        err = err .. ' (it had been asked to cancel)'
        release_unique(id, f[6])
        tombstone(id, 'cancelled', ARGV[4])
        table.insert(out, {id, 'cancelled', tostring(retried + 1), err})
      elseif retried < max then
        redis.call('ZADD', qkey(q, 'retry'), now, id)
        redis.call('HSET', k, 'state', 'retry', 'retried', retried + 1, 'error', err, 'worker', '')
        table.insert(out, {id, 'retry', tostring(retried + 1), err})
      else
        redis.call('ZADD', qkey(q, 'archive'), now, id)
        redis.call('HSET', k, 'state', 'archived', 'retried', retried + 1, 'error', err,
          'archived_at', now, 'worker', '')
        table.insert(out, {id, 'failed', tostring(retried + 1), err})
      end
    end
  end
end
if #out > 0 then redis.call('PUBLISH', P .. 'wake', '') end
return out
