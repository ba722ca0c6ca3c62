-- JOIN: ARGV P, sid, room, peer, node, conn, max_peers, max_rooms, replay_cap
-- -> {'ok', other peer ids...} | {'too-many-rooms'} | {'room-full'} | {'peer-id-taken'}
local sid, room, peer, node, conn = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_peers, max_rooms, cap = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local ms = members(room)
if #ms == 0 and redis.call('SCARD', P .. 'rooms') >= max_rooms then
  return { 'too-many-rooms' }
end
if #ms >= max_peers then
  return { 'room-full' }
end
for _, m in ipairs(ms) do
  if m[1] == peer then
    return { 'peer-id-taken' }
  end
end
redis.call('HSET', P .. 'r:' .. room, peer, sid)
redis.call('SADD', P .. 'rooms', room)
-- seq 1 is the welcome (sent by the node, never replayed).
redis.call('HSET', P .. 's:' .. sid, 'p', peer, 'r', room, 'n', node, 'c', conn, 'q', 2, 'd', 0)
redis.call('SADD', P .. 'ns:' .. node, sid)
local body = '{"type":"peer-joined","peer_id":"' .. peer .. '"'
local out = { 'ok' }
for _, m in ipairs(ms) do
  push(m[2], body, cap)
  out[#out + 1] = m[1]
end
return out
