-- RETIRE: ARGV P, node, window_ms, ttl_ms -> sessions moved to the resume window
-- A node stopping cleanly: its remaining sessions enter the resume window now (as the sweep
-- would do after the heartbeat expired) and the node leaves the node set.
local node, window, ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local nk = P .. 'ns:' .. node
local n = 0
for _, sid in ipairs(redis.call('SMEMBERS', nk)) do
  local sk = P .. 's:' .. sid
  if redis.call('HGET', sk, 'n') == node then
    redis.call('HSET', sk, 'n', '')
    redis.call('ZADD', P .. 'det', now + window, sid)
    redis.call('PEXPIRE', sk, ttl)
    redis.call('PEXPIRE', P .. 'q:' .. sid, ttl)
    n = n + 1
  end
end
redis.call('DEL', nk)
redis.call('ZREM', P .. 'nodes', node)
return n
