--[[
  postback-2: write a publisher's tags for one caller, atomically choosing where
  they go: the caller's live call, the call that ended inside the key's cut-off,
  or the pending hash that the caller's next call claims.

  Input:
    KEYS[1]  pending tags hash   {caller}:p
    KEYS[2]  calls hash          {caller}:c
    ARGV[1]  now, ms since the epoch
    ARGV[2]  the key's end-call cut-off, ms
    ARGV[3]  the key's storage duration, ms
    ARGV[4]  calls hash lifetime after a write, ms
    ARGV[5]  call_uuid the post addresses, or "" to pick by the caller's state
    ARGV[6], ARGV[7], ...  tag name, tag value ("publisher_id:key_id:set_at_ms|value")

  Output:
    {0, expires_at_ms}  no live call, none ended inside the cut-off: tags pending
    {1, call_uuid, call_json}  applied to the live call; the call as now stored
    {2, call_uuid, call_json}  applied to the completed call inside the cut-off
    {-1, ""}            ARGV[5] names no call of this caller
]]
local now = tonumber(ARGV[1])
local cutoff_ms = tonumber(ARGV[2])
local storage_ms = tonumber(ARGV[3])
local call_ttl_ms = tonumber(ARGV[4])
local target = ARGV[5]

-- The call's JSON after the tags are written (see connect-2.lua for its format).
local function apply(uuid, call)
  for i = 6, #ARGV, 2 do
    call.t[ARGV[i]] = ARGV[i + 1]
  end
  call.v = (call.v or 0) + 1
  local raw = cjson.encode(call)
  redis.call('HSET', KEYS[2], uuid, raw)
  redis.call('PEXPIRE', KEYS[2], call_ttl_ms)
  return raw
end

-- (1 or 2, call_json) when the call took the tags, 0 when it ended too long ago,
-- nil when unknown.
local function try_call(uuid)
  local raw = redis.call('HGET', KEYS[2], uuid)
  if not raw then
    return nil
  end
  local call = cjson.decode(raw)
  if call.s == 'in_progress' then
    return 1, apply(uuid, call)
  end
  if now - tonumber(call.e) < cutoff_ms then
    return 2, apply(uuid, call)
  end
  return 0
end

local outcome, call_json
if target ~= '' then
  outcome, call_json = try_call(target)
  if outcome == nil then
    return {-1, ''}
  end
  if outcome > 0 then
    return {outcome, target, call_json}
  end
else
  local pointers = redis.call('HMGET', KEYS[2], '@live', '@last')
  for _, uuid in ipairs(pointers) do
    if uuid then
      outcome, call_json = try_call(uuid)
      if outcome and outcome > 0 then
        return {outcome, uuid, call_json}
      end
    end
  end
end

redis.call('HSET', KEYS[1], unpack(ARGV, 6))
local ttl = redis.call('PTTL', KEYS[1])
if ttl < storage_ms then
  redis.call('PEXPIRE', KEYS[1], storage_ms)
  ttl = storage_ms
end
return {0, now + ttl}
