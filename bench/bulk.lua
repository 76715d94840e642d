-- wrk script, appended to postback.lua by bench/bulk.py: POST /data_writing/{key}/bulk
-- with ITEMS items (JSON), each for a random caller of postback.lua's pool, in its number
-- formats (unescaped: a JSON string is not a URL) and with its tags.
-- env: as postback.lua, and ITEMS (items a request, default 100)
local items = tonumber(os.getenv("ITEMS") or "100")

local function unescaped(text)
  return (text:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

function request()
  local parts = {}
  for i = 1, items do
    parts[i] = string.format(
      '{"caller_number":"%s","utm_source":"google","prequalified":"true","age":"%d"}',
      unescaped(caller()), math.random(18, 90))
  end
  local body = '{"items":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/data_writing/" .. key .. "/bulk",
    {["Content-Type"] = "application/json"}, body)
end
