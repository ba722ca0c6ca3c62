-- HEARTBEAT: ARGV P, node -> {1 if the node was not registered (new, or swept as dead), rooms}
local added = redis.call('ZADD', P .. 'nodes', now_ms(), ARGV[2])
return { added, redis.call('SCARD', P .. 'rooms') }
