-- Included by scripts that claim an idempotency key (see scripts.py): the key's first
-- postback leaves its parameters' fingerprint for the window. True when `claim` is this
-- postback's: claimed now, or before with the same fingerprint.
local function claim_key(claim, fingerprint, until_ms)
  local first = redis.call('SET', claim, fingerprint, 'NX', 'GET', 'PXAT', until_ms)
  return not first or first == fingerprint
end
