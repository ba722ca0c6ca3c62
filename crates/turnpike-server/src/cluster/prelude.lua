-- Shared by every script of the hub's cluster store (prepended to each).
-- Keys, under the prefix P (ARGV[1]):
--   P r:ROOM     hash  peer id -> session id (the room's members)
--   P rooms      set   rooms with members (for the room limit)
--   P s:SID      hash  p peer id, r room, n owning node ('' while detached),
--                      c owning connection, q next seq, d highest seq dropped from the buffer
--   P q:SID      list  "SEQ TEXT", the session's replay buffer (oldest first, capped)
--   P det        zset  detached session -> end of its resume window (Redis ms)
--   P nodes      zset  node -> last heartbeat (Redis ms)
--   P ns:NODE    set   sessions attached on a node
--   P gone:SID   string, a session ended by expiry (read by reconcile), with a TTL
-- Channel P n:NODE carries "D SID SEQ TEXT" (deliver) and "T SID CONN" (taken over).
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Appends BODY .. ',"seq":N}' to a session's stream and publishes it to the node holding
-- the session. Returns the seq, or nil if the session does not exist.
local function push(sid, body, cap)
  local sk = P .. 's:' .. sid
  if redis.call('EXISTS', sk) == 0 then
    return nil
  end
  local seq = redis.call('HINCRBY', sk, 'q', 1) - 1
  local text = body .. ',"seq":' .. seq .. '}'
  local qk = P .. 'q:' .. sid
  if redis.call('RPUSH', qk, seq .. ' ' .. text) > cap then
    local old = redis.call('LPOP', qk)
    redis.call('HSET', sk, 'd', string.match(old, '^%d+'))
  end
  local node = redis.call('HGET', sk, 'n')
  if node and node ~= '' then
    redis.call('PUBLISH', P .. 'n:' .. node, 'D ' .. sid .. ' ' .. seq .. ' ' .. text)
  else
    local ttl = redis.call('PTTL', sk)
    if ttl > 0 then
      redis.call('PEXPIRE', qk, ttl)
    end
  end
  return seq
end

-- The members of a room as {peer, sid} pairs, dropping entries whose session expired.
local function members(room)
  local rk = P .. 'r:' .. room
  local flat = redis.call('HGETALL', rk)
  local out = {}
  for i = 1, #flat, 2 do
    if redis.call('EXISTS', P .. 's:' .. flat[i + 1]) == 1 then
      out[#out + 1] = { flat[i], flat[i + 1] }
    else
      redis.call('HDEL', rk, flat[i])
    end
  end
  if #out == 0 then
    redis.call('SREM', P .. 'rooms', room)
  end
  return out
end

-- Ends a session: out of its room, 'peer-left' to the others, keys deleted. 1 if it existed.
local function finish(sid, cap)
  local sk = P .. 's:' .. sid
  local s = redis.call('HMGET', sk, 'p', 'r', 'n')
  redis.call('ZREM', P .. 'det', sid)
  if not s[1] then
    return 0
  end
  local rk = P .. 'r:' .. s[2]
  if redis.call('HGET', rk, s[1]) == sid then
    redis.call('HDEL', rk, s[1])
  end
  if s[3] and s[3] ~= '' then
    redis.call('SREM', P .. 'ns:' .. s[3], sid)
  end
  redis.call('DEL', sk, P .. 'q:' .. sid)
  local body = '{"type":"peer-left","peer_id":"' .. s[1] .. '"'
  for _, m in ipairs(members(s[2])) do
    push(m[2], body, cap)
  end
  return 1
end

-- Attaches an existing session to NODE/CONN and returns its buffered entries with seq >= FROM.
local function attach(sid, node, conn, from)
  local sk = P .. 's:' .. sid
  redis.call('HSET', sk, 'n', node, 'c', conn)
  redis.call('SADD', P .. 'ns:' .. node, sid)
  redis.call('ZREM', P .. 'det', sid)
  redis.call('PERSIST', sk)
  redis.call('PERSIST', P .. 'q:' .. sid)
  local out = {}
  for _, e in ipairs(redis.call('LRANGE', P .. 'q:' .. sid, 0, -1)) do
    if tonumber(string.match(e, '^%d+')) >= from then
      out[#out + 1] = e
    end
  end
  return out
end
