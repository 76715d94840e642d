--[[
  retract-1: remove a caller's pending tags: all of them, or those one publisher set.

  Input:
    KEYS[1]  pending tags hash   {caller}:p
    ARGV[1]  publisher id, or "" for every publisher

  Output:
    the number of pending tags removed
]]
local publisher = ARGV[1]
if publisher == '' then
  local count = redis.call('HLEN', KEYS[1])
  redis.call('DEL', KEYS[1])
  return count
end
local prefix = publisher .. ':'
local all = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 1, #prefix) == prefix then
    gone[#gone + 1] = all[i]
  end
end
-- HDEL in slices: unpack() of a very long list overflows Lua's stack.
for first = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[1], unpack(gone, first, math.min(first + 999, #gone)))
end
return #gone
