--[[
  ratelimit-2: take one token a postback from a postback key's bucket, for a batch of
  postbacks, one after the other. Used where the bucket cannot be passed to
  postback-6.lua (Redis Cluster: another slot than the callers' keys).

  Input:
    KEYS[1]  the key's token bucket   {prefix}rate:{key_id}
    ARGV[1]  now, ms since the epoch
    ARGV[2]  tokens a second
    ARGV[3]  burst (bucket size)
    ARGV[4]  the postbacks: tokens to take, one at a time

  Output:
    one number a postback: remaining tokens (>= 0) when allowed, or -retry_after_ms
    when refused
]]
-- @include take_token.lua
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local left = {}
for n = 1, tonumber(ARGV[4]) do
  left[n] = take_token(KEYS[1], now, rate, burst)
end
return left
