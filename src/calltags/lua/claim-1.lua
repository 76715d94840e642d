--[[
  claim-1: claim an idempotency key for a postback's fingerprint. Used where the claim
  cannot be passed to postback-6.lua (Redis Cluster: it is routed by the idempotency key,
  not the caller).

  Input:
    KEYS[1]  the claim   {prefix}idem:{key_id:token}
    ARGV[1]  the fingerprint of the postback's parameters
    ARGV[2]  when the claim expires, ms since the epoch

  Output:
    1 when the key is this postback's (claimed now, or before with the same
    fingerprint), 0 when its first postback had other parameters
]]
-- @include claim_key.lua
return claim_key(KEYS[1], ARGV[1], ARGV[2]) and 1 or 0
