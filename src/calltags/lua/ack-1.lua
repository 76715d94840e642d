--[[
  ack-1: a worker is done with stream entries (their rows are committed in Postgres):
  acknowledge them in the consumer group and delete them from the stream, together,
  so that no entry stays in the stream acknowledged (it would count as backlog for
  ever) and none is deleted while still pending.

  Input:
    KEYS[1]  a log stream          {prefix}log:{N} or {prefix}calllog:{N}
    ARGV[1]  consumer group
    ARGV[2], ARGV[3], ...  entry IDs

  Output:
    the number of entries deleted
]]
local group = ARGV[1]
local done = 0
-- In slices: unpack() of many thousand IDs would overflow Lua's stack.
for first = 2, #ARGV, 1000 do
  local last = math.min(first + 999, #ARGV)
  redis.call('XACK', KEYS[1], group, unpack(ARGV, first, last))
  done = done + redis.call('XDEL', KEYS[1], unpack(ARGV, first, last))
end
return done
