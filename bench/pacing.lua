-- Appended to a wrk script by bench/flood.py (--flood-rate): at most FLOOD_RATE requests
-- a second over all connections of a wrk thread (run it with -t1), spread evenly; when
-- the server is slower than that, as fast as it answers (no burst to catch up).
-- env: FLOOD_RATE (requests a second; 0 or unset: no pacing)
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } pacing_timespec;
  int clock_gettime(int clock, pacing_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local rate = tonumber(os.getenv("FLOOD_RATE") or "0")
local interval_ms = rate > 0 and 1000 / rate or 0
local clock = ffi.new("pacing_timespec")
local next_ms = 0

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

function delay()
  if interval_ms == 0 then
    return 0
  end
  local now = now_ms()
  next_ms = math.max(next_ms + interval_ms, now)
  return next_ms - now
end
