-- RECONCILE: ARGV P, sid, node, conn, peer, room, next_seq
-- After the node lost its link to Redis: re-attach a session the node still serves.
-- -> {'ok', dropped, entries with seq >= next_seq...} (still there; maybe detached meanwhile)
--  | {'restored'} (Redis had lost it: recreated, continuing at next_seq)
--  | {'moved'} (resumed on another connection) | {'ended'} (its resume window ended)
local sid, node, conn, peer, room, nxt = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local sk = P .. 's:' .. sid
local s = redis.call('HMGET', sk, 'n', 'c', 'd')
if s[1] then
  if s[1] ~= '' and (s[1] ~= node or s[2] ~= conn) then
    return { 'moved' }
  end
  -- Redis may have come back with older data (a snapshot, an AOF behind the node): never
  -- hand out a seq the node has already delivered, or the client would drop the message.
  if tonumber(redis.call('HGET', sk, 'q') or '0') < tonumber(nxt) then
    redis.call('HSET', sk, 'q', nxt)
  end
  local out = { 'ok', s[3] or '0' }
  for _, e in ipairs(attach(sid, node, conn, tonumber(nxt))) do
    out[#out + 1] = e
  end
  return out
end
if redis.call('EXISTS', P .. 'gone:' .. sid) == 1 then
  return { 'ended' }
end
local rk = P .. 'r:' .. room
local cur = redis.call('HGET', rk, peer)
if cur and cur ~= sid and redis.call('EXISTS', P .. 's:' .. cur) == 1 then
  return { 'ended' }
end
redis.call('HSET', rk, peer, sid)
redis.call('SADD', P .. 'rooms', room)
redis.call('HSET', sk, 'p', peer, 'r', room, 'n', node, 'c', conn, 'q', nxt, 'd', tonumber(nxt) - 1)
redis.call('SADD', P .. 'ns:' .. node, sid)
return { 'restored' }
