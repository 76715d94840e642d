--[[
  ack-1: a worker is done with stream entries (their rows are committed in Postgres):
  acknowledge them in the consumer group and delete them from the stream, together,
  so that no entry stays in the stream acknowledged (it would count as backlog for
  ever) and none is deleted while still pending.

  Input:
    KEYS[1]  a log stream          {prefix}log:{N} or {prefix}calllog:{N}
    ARGV[1]  consumer group
    ARGV[2]  the entry IDs, separated by spaces: one argument for a batch of thousands,
             which the client then sends without handling each ID

  Output:
    the number of entries deleted
]]
local group = ARGV[1]
local ids = {}
for id in string.gmatch(ARGV[2], '%S+') do
  ids[#ids + 1] = id
end
local done = 0
-- In slices: unpack() of many thousand IDs would overflow Lua's stack.
for first = 1, #ids, 1000 do
  local last = math.min(first + 999, #ids)
  redis.call('XACK', KEYS[1], group, unpack(ids, first, last))
  done = done + redis.call('XDEL', KEYS[1], unpack(ids, first, last))
end
return done
