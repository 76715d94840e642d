--[[
  ratelimit-1: take one token from a postback key's bucket. Used where the bucket cannot
  be passed to postback-5.lua (Redis Cluster: another slot than the caller's keys).

  Input:
    KEYS[1]  the key's token bucket   {prefix}rate:{key_id}
    ARGV[1]  now, ms since the epoch
    ARGV[2]  tokens a second
    ARGV[3]  burst (bucket size)

  Output:
    remaining tokens (>= 0) when allowed, or -retry_after_ms when refused
]]
-- @include take_token.lua
return take_token(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
