-- DETACH: ARGV P, sid, node, conn, window_ms, ttl_ms -> 1 | 0 (not this connection's)
local sid = ARGV[2]
local sk = P .. 's:' .. sid
local s = redis.call('HMGET', sk, 'n', 'c')
if not s[1] or s[1] ~= ARGV[3] or s[2] ~= ARGV[4] then
  return 0
end
redis.call('HSET', sk, 'n', '')
redis.call('SREM', P .. 'ns:' .. ARGV[3], sid)
redis.call('ZADD', P .. 'det', now_ms() + tonumber(ARGV[5]), sid)
redis.call('PEXPIRE', sk, ARGV[6])
redis.call('PEXPIRE', P .. 'q:' .. sid, ARGV[6])
return 1
