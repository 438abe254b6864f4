-- Asks the worker holding an active task to stop it (it sees the flag on its next
-- lease tick). ARGV: 2 id. Returns the task's state ('missing' when unknown).
local k = tkey(ARGV[2])
local state = redis.call('HGET', k, 'state')
if not state then return 'missing' end
if state == 'active' then redis.call('HSET', k, 'cancel', '1') end
return state
