--[[
  fail-1: count a failed key attempt from one client address in a fixed window.

  Input:
    KEYS[1]  the address's counter   {prefix}fail:{address}
    ARGV[1]  window, ms

  Output:
    {attempts in this window, ms until the window ends}
]]
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return {count, redis.call('PTTL', KEYS[1])}
