-- wrk script: GET /data_writing for random callers from a pool, in several number formats.
-- env: CALLTAGS_KEY (the postback key), CALLERS (pool size, default 100000)
local key = os.getenv("CALLTAGS_KEY") or "missing"
local pool = tonumber(os.getenv("CALLERS") or "100000")
local formats = {"%%2B1212%07d", "(212)%%20%03d-%04d", "1212%07d", "212-%03d-%04d"}
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
  local path = "/data_writing?key=" .. key .. "&caller_number=" .. caller() ..
    "&utm_source=google&prequalified=true&age=" .. math.random(18, 90)
  return wrk.format("GET", path)
end
