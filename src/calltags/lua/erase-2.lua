--[[
  erase-2: delete a caller's pending tags and calls.

  Input:
    KEYS[1]  pending tags hash   {caller}:p
    KEYS[2]  calls hash          {caller}:c

  Output:
    {pending tags deleted, call_uuid, ...}: the uuids of the calls deleted, whose
    lookup keys ({prefix}call:{uuid}, in other slots) the caller deletes next
]]
local reply = {redis.call('HLEN', KEYS[1])}
local all = redis.call('HKEYS', KEYS[2])
for _, field in ipairs(all) do
  if string.sub(field, 1, 1) ~= '@' then
    reply[#reply + 1] = field
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return reply
