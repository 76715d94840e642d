-- Included by scripts that rate-limit (see scripts.py): a token bucket in a hash
-- {t = tokens, u = updated_ms}, refilled at `rate` tokens a second up to `burst`.
-- Returns remaining tokens (>= 0) when one was taken, or -wait_ms when the bucket is empty.
local function take_token(bucket, now_ms, rate, burst)
  local state = redis.call('HMGET', bucket, 't', 'u')
  local tokens = tonumber(state[1]) or burst
  local updated = tonumber(state[2]) or now_ms
  if now_ms > updated then
    tokens = math.min(burst, tokens + (now_ms - updated) * rate / 1000)
  end
  local full_in_ms = math.ceil((burst - tokens + 1) * 1000 / rate)
  if tokens < 1 then
    redis.call('HSET', bucket, 't', tostring(tokens), 'u', now_ms)
    redis.call('PEXPIRE', bucket, full_in_ms)
    return -math.ceil((1 - tokens) * 1000 / rate)
  end
  tokens = tokens - 1
  redis.call('HSET', bucket, 't', tostring(tokens), 'u', now_ms)
  redis.call('PEXPIRE', bucket, full_in_ms)
  return math.floor(tokens)
end
