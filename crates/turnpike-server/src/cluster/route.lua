-- ROUTE: ARGV P, sid, to, body, replay_cap -> 'ok' | 'nf' (no such peer) | 'gone' (sender's
-- session is no longer in its room)
local sid = ARGV[2]
local s = redis.call('HMGET', P .. 's:' .. sid, 'p', 'r')
if not s[1] then
  return 'gone'
end
local rk = P .. 'r:' .. s[2]
if redis.call('HGET', rk, s[1]) ~= sid then
  return 'gone'
end
local t = redis.call('HGET', rk, ARGV[3])
if not t or t == sid then
  return 'nf'
end
if not push(t, ARGV[4], tonumber(ARGV[5])) then
  redis.call('HDEL', rk, ARGV[3])
  return 'nf'
end
return 'ok'
