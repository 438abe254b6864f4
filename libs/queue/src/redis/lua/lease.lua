-- Moves due scheduled and retry tasks to their pending lists, then leases the first
-- pending task in the given order of lists (the worker's own list before the shared
-- one, queue by queue in the weighted order the caller drew).
-- ARGV: 2 now ms, 3 lease until ms, 4 worker, 5.. queue names in order
-- Returns false, {'leased', id, retried, deadline}, or {'deadline', id, retried}
-- (a task whose deadline passed before it ran: archived here, recorded by the caller).
local now, worker = tonumber(ARGV[2]), ARGV[4]
for i = 5, #ARGV do
  local q = ARGV[i]
  for _, kind in ipairs({'scheduled', 'retry'}) do
    local z = qkey(q, kind)
    local due = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(due) do
      local f = redis.call('HMGET', tkey(id), 'state', 'target')
      if f[1] == kind then
        redis.call('RPUSH', pending_key(q, f[2]), id)
        redis.call('HSET', tkey(id), 'state', 'pending')
      end
      redis.call('ZREM', z, id)
    end
  end
end
for i = 5, #ARGV do
  local q = ARGV[i]
  for _, list in ipairs({pending_key(q, worker), qkey(q, 'pending')}) do
    while true do
      local id = redis.call('LPOP', list)
      if not id then break end
      local k = tkey(id)
      local f = redis.call('HMGET', k, 'state', 'retried', 'deadline')
      if f[1] == 'pending' then
        local deadline = tonumber(f[3] or '0') or 0
        if deadline > 0 and deadline <= now then
          redis.call('HSET', k, 'state', 'archived', 'archived_at', now,
            'error', 'its deadline passed before it could run')
          redis.call('ZADD', qkey(q, 'archive'), now, id)
          return {'deadline', id, f[2]}
        end
        redis.call('HSET', k, 'state', 'active', 'worker', worker)
        redis.call('ZADD', qkey(q, 'lease'), ARGV[3], id)
        return {'leased', id, f[2], tostring(deadline)}
      end
      -- Not pending (a stale entry): skip it.
    end
  end
end
return false
