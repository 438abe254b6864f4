-- Takes a task out of the queue for good (it finished, was cancelled, dropped or
-- deleted from the archive), leaving a tombstone and releasing its unique key.
-- ARGV: 2 id, 3 allowed states as ',a,b,', 4 worker that must hold it or '',
-- 5 outcome, 6 tombstone ttl ms.
-- Returns the state it was in, or 'no:<state>' / 'missing' when nothing changed.
local id = ARGV[2]
local f = redis.call('HMGET', tkey(id), 'state', 'worker', 'queue', 'target', 'unique')
local state = f[1]
if not state then return 'missing' end
if not string.find(ARGV[3], ',' .. state .. ',', 1, true) then return 'no:' .. state end
if ARGV[4] ~= '' and f[2] ~= ARGV[4] then return 'no:' .. state end
unlink(id, state, f[3], f[4])
release_unique(id, f[5])
tombstone(id, ARGV[5], ARGV[6])
return state
