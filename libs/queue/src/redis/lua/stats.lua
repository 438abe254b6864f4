-- Counts per queue: {queue, pending, scheduled, retry, active, archived} for each
-- queue name in ARGV[2..] (pending includes every worker's targeted list).
local targets = redis.call('SMEMBERS', P .. 'targets')
local out = {}
for i = 2, #ARGV do
  local q = ARGV[i]
  local pending = redis.call('LLEN', qkey(q, 'pending'))
  for _, w in ipairs(targets) do pending = pending + redis.call('LLEN', pending_key(q, w)) end
  table.insert(out, {q, pending, redis.call('ZCARD', qkey(q, 'scheduled')),
    redis.call('ZCARD', qkey(q, 'retry')), redis.call('ZCARD', qkey(q, 'lease')),
    redis.call('ZCARD', qkey(q, 'archive'))})
end
return out
