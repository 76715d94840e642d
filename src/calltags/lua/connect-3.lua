--[[
  connect-3: start a live call for a caller and claim every pending tag into it.
  One script call per connect, so of any number of concurrent connects for a
  caller exactly one receives a given pending tag.

  Input:
    KEYS[1]  pending tags hash   {caller}:p
    KEYS[2]  calls hash          {caller}:c
    KEYS[3]  optional: call log stream to append the call's snapshot to (field c); on
             Redis Cluster it lives in another slot and the caller appends it instead
    ARGV[1]  call_uuid
    ARGV[2]  now, ms since the epoch
    ARGV[3]  calls hash lifetime after a write, ms
    ARGV[4]  caller number, E.164
    ARGV[5]  publisher_id given by routing, or ""
    ARGV[6]  campaign given by routing, or ""

  Output:
    {0, call_json}  a new live call holding the claimed tags
    {1, call_json}  a call with this call_uuid already exists: it is returned unchanged

  The call JSON: {"u": uuid, "n": caller, "s": "in_progress"|"completed",
  "b": started_ms, "e": ended_ms (once completed), "p": publisher_id, "c": campaign,
  "t": {name: "publisher_id:key_id:set_at_ms|value"}, "v": version}. Times are strings.
  "v" counts the writes of the call (1 at connect, +1 for each later change), so the
  workers keep the newest snapshot of a call whatever order snapshots arrive in.
]]
local uuid = ARGV[1]
local now = ARGV[2]
local call_ttl_ms = tonumber(ARGV[3])

-- Also when nothing changed: a client retrying after a lost reply re-sends the snapshot,
-- and the workers keep the highest version anyway.
local function recorded(reply)
  if KEYS[3] then
    redis.call('XADD', KEYS[3], '*', 'c', reply[2])
  end
  return reply
end

local existing = redis.call('HGET', KEYS[2], uuid)
if existing then
  return recorded({1, existing})
end

local tags = {}
local pending = redis.call('HGETALL', KEYS[1])
for i = 1, #pending, 2 do
  tags[pending[i]] = pending[i + 1]
end
if #pending > 0 then
  redis.call('DEL', KEYS[1])
end

-- cjson encodes an empty table as {}, which Python reads as an empty object.
local call = {
  u = uuid, n = ARGV[4], s = 'in_progress', b = now, p = ARGV[5], c = ARGV[6], t = tags, v = 1,
}
local raw = cjson.encode(call)
redis.call('HSET', KEYS[2], uuid, raw, '@live', uuid)
redis.call('PEXPIRE', KEYS[2], call_ttl_ms)
return recorded({0, raw})
