-- SWEEP: ARGV P, node_ttl_ms, window_ms, ttl_ms, replay_cap, batch
-- Nodes silent for node_ttl_ms are dead: their sessions enter the resume window. Sessions
-- whose window ended are finished ('peer-left' to the others). -> {dead nodes, detached, ended}
local now = now_ms()
local window, ttl, cap = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local dead = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 16)
local detached = 0
for _, d in ipairs(dead) do
  redis.call('ZREM', P .. 'nodes', d)
  local nk = P .. 'ns:' .. d
  for _, sid in ipairs(redis.call('SMEMBERS', nk)) do
    local sk = P .. 's:' .. sid
    if redis.call('HGET', sk, 'n') == d then
      redis.call('HSET', sk, 'n', '')
      redis.call('ZADD', P .. 'det', now + window, sid)
      redis.call('PEXPIRE', sk, ttl)
      redis.call('PEXPIRE', P .. 'q:' .. sid, ttl)
      detached = detached + 1
    end
  end
  redis.call('DEL', nk)
end
local ended = 0
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'det', '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))) do
  ended = ended + finish(sid, cap)
  redis.call('SET', P .. 'gone:' .. sid, '1', 'PX', ttl)
end
return { #dead, detached, ended }
