--[[
  end-2: complete a call. The end-call cut-off of every key starts now: posts
  within a key's cut-off apply to this call (see postback-6.lua).

  Input:
    KEYS[1]  calls hash          {caller}:c
    KEYS[2]  optional: call log stream to append the call's snapshot to (field c); on
             Redis Cluster it lives in another slot and the caller appends it instead
    ARGV[1]  call_uuid
    ARGV[2]  now, ms since the epoch
    ARGV[3]  calls hash lifetime after a write, ms

  Output:
    {0, call_json}  the call, completed now
    {1, call_json}  the call was already completed: returned unchanged
    {-1, ""}        no call with this call_uuid
]]
local uuid = ARGV[1]
local now = ARGV[2]
local call_ttl_ms = tonumber(ARGV[3])

local raw = redis.call('HGET', KEYS[1], uuid)
if not raw then
  return {-1, ''}
end
local function recorded(reply)
  if KEYS[2] then
    redis.call('XADD', KEYS[2], '*', 'c', reply[2])
  end
  return reply
end

local call = cjson.decode(raw)
if call.s == 'completed' then
  return recorded({1, raw})
end
call.s = 'completed'
call.e = now
call.v = (call.v or 0) + 1
raw = cjson.encode(call)
redis.call('HSET', KEYS[1], uuid, raw, '@last', uuid)

-- The "live" pointer moves to the newest call still in progress, if any.
if redis.call('HGET', KEYS[1], '@live') == uuid then
  local newest, newest_start = nil, -1
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local value = all[i + 1]
    if string.sub(value, 1, 1) == '{' and string.find(value, '"s":"in_progress"', 1, true) then
      local other = cjson.decode(value)
      local started = tonumber(other.b)
      if started > newest_start then
        newest, newest_start = other.u, started
      end
    end
  end
  if newest then
    redis.call('HSET', KEYS[1], '@live', newest)
  else
    redis.call('HDEL', KEYS[1], '@live')
  end
end
redis.call('PEXPIRE', KEYS[1], call_ttl_ms)
return recorded({0, raw})
