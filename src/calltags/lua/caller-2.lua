--[[
  caller-2: what Redis holds of one caller, read at one instant.

  Input:
    KEYS[1]  pending tags hash   {caller}:p
    KEYS[2]  calls hash          {caller}:c

  Output:
    {pending_ttl_ms, {name, value, ...}, {call_json, ...}}
    pending_ttl_ms is PTTL of the pending hash (-2: none); the values are as stored
    ("publisher_id:key_id:set_at_ms|value"); the calls leave out the pointer fields
    (@live, @last).
]]
local pending = redis.call('HGETALL', KEYS[1])
local calls = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 1) ~= '@' then
    calls[#calls + 1] = all[i + 1]
  end
end
return {redis.call('PTTL', KEYS[1]), pending, calls}
