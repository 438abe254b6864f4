-- Shared by every script (prepended to each). ARGV[1] is always the key prefix.
-- Keys: <P>t:<id> task hash; <P>q:<queue>:pending list; <P>w:<worker>:<queue>
-- targeted pending list; <P>q:<queue>:{scheduled,retry,lease,archive} zsets;
-- <P>targets set of workers with targeted lists; <P>wake pub/sub channel.
local P = ARGV[1]
local function tkey(id) return P .. 't:' .. id end
local function qkey(q, kind) return P .. 'q:' .. q .. ':' .. kind end
local function pending_key(q, target)
  if target and target ~= '' then return P .. 'w:' .. target .. ':' .. q end
  return qkey(q, 'pending')
end
local function release_unique(id, ukey)
  if ukey and ukey ~= '' and redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
end
-- A finished task leaves a small marker for a while, so that the reconcile sweep
-- never re-enqueues a task that just ended (see docs/architecture.md).
local function tombstone(id, outcome, ttl)
  local k = tkey(id)
  redis.call('DEL', k)
  redis.call('HSET', k, 'state', 'done', 'outcome', outcome)
  redis.call('PEXPIRE', k, ttl)
end
-- Takes the task out of whatever list or zset its state puts it in.
local function unlink(id, state, q, target)
  if state == 'pending' then redis.call('LREM', pending_key(q, target), 1, id)
  elseif state == 'scheduled' then redis.call('ZREM', qkey(q, 'scheduled'), id)
  elseif state == 'retry' then redis.call('ZREM', qkey(q, 'retry'), id)
  elseif state == 'active' then redis.call('ZREM', qkey(q, 'lease'), id)
  elseif state == 'archived' then redis.call('ZREM', qkey(q, 'archive'), id)
  end
end
