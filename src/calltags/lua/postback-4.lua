--[[
  postback-4: write a publisher's tags for one caller, atomically choosing where they
  go: the caller's live call, the call that ended inside the key's cut-off, or the
  pending hash that the caller's next call claims. With KEYS[3] it also appends the
  request's log entry with the outcome, and with KEYS[4] it first takes a token from
  the key's rate limit bucket: both only on a single Redis node. On Redis Cluster those
  keys live in other slots, so the caller passes KEYS[1..2] only and does the rate limit
  (ratelimit-1.lua) and the log append (XADD) itself.

  Input:
    KEYS[1]  pending tags hash   {caller}:p
    KEYS[2]  calls hash          {caller}:c
    KEYS[3]  optional: postback log stream to append the entry to
    KEYS[4]  optional: the key's token bucket
    ARGV[1]  now, ms since the epoch
    ARGV[2]  the key's end-call cut-off, ms
    ARGV[3]  the key's storage duration, ms
    ARGV[4]  calls hash lifetime after a write, ms
    ARGV[5]  call_uuid the post addresses, or "" to pick by the caller's state
    ARGV[6]  rate limit, tokens a second (with KEYS[4])
    ARGV[7]  rate limit burst (with KEYS[4])
    ARGV[8]  the log entry, JSON (with KEYS[3]); appended as field e, the outcome code as
             field r and the call JSON, when tags went to a call, as field c
    ARGV[9], ARGV[10], ...  tag name, tag value ("publisher_id:key_id:set_at_ms|value")

  Output:
    {0, expires_at_ms}         no live call, none ended inside the cut-off: tags pending
    {1, call_uuid, call_json}  applied to the live call; the call as now stored
    {2, call_uuid, call_json}  applied to the completed call inside the cut-off
    {-1, ""}                   ARGV[5] names no call of this caller
    {-2, retry_after_ms}       the key's rate limit refused the post; nothing written
]]
-- @include take_token.lua
local now = tonumber(ARGV[1])
local cutoff_ms = tonumber(ARGV[2])
local storage_ms = tonumber(ARGV[3])
local call_ttl_ms = tonumber(ARGV[4])
local target = ARGV[5]
local FIRST_TAG = 9

local function logged(reply, call_json)
  if KEYS[3] then
    if call_json then
      redis.call('XADD', KEYS[3], '*', 'e', ARGV[8], 'r', reply[1], 'c', call_json)
    else
      redis.call('XADD', KEYS[3], '*', 'e', ARGV[8], 'r', reply[1])
    end
  end
  return reply
end

if KEYS[4] then
  local left = take_token(KEYS[4], now, tonumber(ARGV[6]), tonumber(ARGV[7]))
  if left < 0 then
    return logged({-2, -left})
  end
end

-- The call's JSON after the tags are written (see connect-3.lua for its format).
local function apply(uuid, call)
  for i = FIRST_TAG, #ARGV, 2 do
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

if target ~= '' then
  local outcome, call_json = try_call(target)
  if outcome == nil then
    return logged({-1, ''})
  end
  if outcome > 0 then
    return logged({outcome, target, call_json}, call_json)
  end
else
  local pointers = redis.call('HMGET', KEYS[2], '@live', '@last')
  for _, uuid in ipairs(pointers) do
    if uuid then
      local outcome, call_json = try_call(uuid)
      if outcome and outcome > 0 then
        return logged({outcome, uuid, call_json}, call_json)
      end
    end
  end
end

redis.call('HSET', KEYS[1], unpack(ARGV, FIRST_TAG))
local ttl = redis.call('PTTL', KEYS[1])
if ttl < storage_ms then
  redis.call('PEXPIRE', KEYS[1], storage_ms)
  ttl = storage_ms
end
return logged({0, now + ttl})
