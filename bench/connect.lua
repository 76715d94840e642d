-- wrk script: POST /calls (connect) for random callers from a pool.
-- env: CALLTAGS_TOKEN (routing or admin token), CALLERS (pool size, default 100000)
local token = os.getenv("CALLTAGS_TOKEN") or "missing"
local pool = tonumber(os.getenv("CALLERS") or "100000")
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(os.time() + id * 7919)
end

function request()
  local n = math.random(0, pool - 1) + 2000000
  local body = string.format('{"caller_number":"+1212%07d","campaign":"bench"}', n)
  return wrk.format("POST", "/calls", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end
