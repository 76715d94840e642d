-- wrk script: POST /data_writing/bulk with ITEMS postbacks an item (JSON), each for a
-- random caller of the pool, in the number formats and with the tags of postback.lua.
-- env: CALLTAGS_KEY (the postback key), CALLERS (pool size), ITEMS (items a request)
local key = os.getenv("CALLTAGS_KEY") or "missing"
local pool = tonumber(os.getenv("CALLERS") or "100000")
local items = tonumber(os.getenv("ITEMS") or "100")
local formats = {"+1212%07d", "(212) %03d-%04d", "1212%07d", "212-%03d-%04d"}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(os.time() + id * 7919)
end

local function caller()
  local n = math.random(0, pool - 1) + 2000000
  local f = math.random(1, 4)
  if f == 2 or f == 4 then
    return string.format(formats[f], math.floor(n / 10000) % 1000, n % 10000)
  end
  return string.format(formats[f], n)
end

function request()
  local parts = {}
  for i = 1, items do
    parts[i] = string.format(
      '{"caller_number":"%s","utm_source":"google","prequalified":"true","age":"%d"}',
      caller(), math.random(18, 90))
  end
  local body = '{"items":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/data_writing/" .. key .. "/bulk",
    {["Content-Type"] = "application/json"}, body)
end
