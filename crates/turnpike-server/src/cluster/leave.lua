-- LEAVE: ARGV P, sid, node, conn, replay_cap -> 'ok' | 'gone' (not this connection's)
local s = redis.call('HMGET', P .. 's:' .. ARGV[2], 'n', 'c')
if not s[1] or s[1] ~= ARGV[3] or s[2] ~= ARGV[4] then
  return 'gone'
end
finish(ARGV[2], tonumber(ARGV[5]))
return 'ok'
