-- RESUME: ARGV P, sid, node, conn, last_seq
-- -> {'ok', peer, room, seq of resumed, dropped, n, n other peers..., entries after last_seq...}
--  | {'nf'}
local sid, node, conn = ARGV[2], ARGV[3], ARGV[4]
local sk = P .. 's:' .. sid
local s = redis.call('HMGET', sk, 'p', 'r', 'n', 'c', 'd')
if not s[1] then
  return { 'nf' }
end
if s[3] ~= '' then
  if s[3] ~= node or s[4] ~= conn then
    redis.call('PUBLISH', P .. 'n:' .. s[3], 'T ' .. sid .. ' ' .. s[4])
  end
  redis.call('SREM', P .. 'ns:' .. s[3], sid)
end
local entries = attach(sid, node, conn, tonumber(ARGV[5]) + 1)
local seq = redis.call('HINCRBY', sk, 'q', 1) - 1
local out = { 'ok', s[1], s[2], tostring(seq), s[5] or '0' }
local ms = members(s[2])
out[#out + 1] = tostring(#ms)
for _, m in ipairs(ms) do
  out[#out + 1] = m[1]
end
for _, e in ipairs(entries) do
  out[#out + 1] = e
end
return out
