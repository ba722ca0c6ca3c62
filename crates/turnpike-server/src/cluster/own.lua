-- OWN: ARGV P, sid, body, replay_cap -> 'ok' | 'gone'
if push(ARGV[2], ARGV[3], tonumber(ARGV[4])) then
  return 'ok'
end
return 'gone'
