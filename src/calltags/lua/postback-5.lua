--[[
  postback-5: write a publisher's tags for one caller, atomically choosing where they
  go: the caller's live call, the call that ended inside the key's cut-off, or the
  pending hash that the caller's next call claims. An idempotent postback (one with an
  idempotency key) writes only if its key has no answer yet: a repeat gets the first
  answer back and writes nothing, and the key with other parameters is refused.

  Beside the caller's two keys the script takes optional ones, named in ARGV[9]: the
  idempotency record (in the caller's slot, so on Redis Cluster too); and on a single
  Redis node only, the idempotency claim, the log stream to append the entry to and the
  key's token bucket. On Redis Cluster those live in other slots, so the caller claims
  the idempotency key (claim-1.lua), takes the rate limit's token (ratelimit-1.lua) and
  appends the log entry (XADD) itself.

  Input:
    KEYS[1]  pending tags hash   {caller}:p
    KEYS[2]  calls hash          {caller}:c
    KEYS[3], KEYS[4], ...  the optional keys, in the order ARGV[9] names them
    ARGV[1]  now, ms since the epoch
    ARGV[2]  the key's end-call cut-off, ms
    ARGV[3]  the key's storage duration, ms
    ARGV[4]  calls hash lifetime after a write, ms
    ARGV[5]  call_uuid the post addresses, or "" to pick by the caller's state
    ARGV[6]  rate limit, tokens a second (with a bucket)
    ARGV[7]  rate limit burst (with a bucket)
    ARGV[8]  the log entry, JSON (with a log stream); appended as field e, the outcome
             code as field r and the call JSON, when tags went to a call, as field c
    ARGV[9]  one letter for each of KEYS[3], KEYS[4], ...:
               i  the idempotency record {caller}:i:KEY_ID:TOKEN, a hash: the
                  fingerprint f, outcome o, detail d and answer a of the first write
               s  with i: the set {caller}:is of the caller's records' names, which
                  lives as long as its longest-lived record (an erase reads it)
               f  the idempotency claim idem:{KEY_ID:TOKEN}: the first fingerprint
               l  the postback log stream
               b  the key's token bucket
    with i or f only (so that a postback without an idempotency key passes no more
    arguments than it needs: Redis builds ARGV anew every call):
    ARGV[10] the fingerprint of the postback's parameters
    ARGV[11] when the idempotency records expire, ms since the epoch
    ARGV[12] the answer's parts the write does not decide, kept in the record (with i)
    then: tag name, tag value ("publisher_id:key_id:set_at_ms|value"), ...: from ARGV[13]
    with i or f, else from ARGV[10]

  Output:
    {0, expires_at_ms}         no live call, none ended inside the cut-off: tags pending
    {1, call_uuid, call_json}  applied to the live call; the call as now stored
    {2, call_uuid, call_json}  applied to the completed call inside the cut-off
    {3, outcome, detail, answer}  a repeat of an idempotent postback: the first one's
                               outcome (0, 1 or 2), its detail and ARGV[12]; nothing
                               written, nothing logged (the caller logs the replay)
    {-1, ""}                   ARGV[5] names no call of this caller
    {-2, retry_after_ms}       the key's rate limit refused the post; nothing written
    {-3, ""}                   the idempotency key's first postback had other
                               parameters (or another caller); nothing written
]]
-- @include take_token.lua
-- @include claim_key.lua
local now = tonumber(ARGV[1])
local cutoff_ms = tonumber(ARGV[2])
local storage_ms = tonumber(ARGV[3])
local call_ttl_ms = tonumber(ARGV[4])
local target = ARGV[5]

-- The optional keys by their letters (string.find: no table, no new strings a call).
local optional = ARGV[9]
local at = string.find(optional, 'i', 1, true)
local record = at and KEYS[2 + at]
at = string.find(optional, 's', 1, true)
local records = at and KEYS[2 + at]
at = string.find(optional, 'f', 1, true)
local claim = at and KEYS[2 + at]
at = string.find(optional, 'l', 1, true)
local log_stream = at and KEYS[2 + at]
at = string.find(optional, 'b', 1, true)
local bucket = at and KEYS[2 + at]
local fingerprint = ARGV[10]
local idempotent_until = ARGV[11]
local FIRST_TAG = (record or claim) and 13 or 10

-- The reply, logged; a write's (outcome 0, 1 or 2) also kept as the idempotency key's
-- answer.
local function logged(reply, call_json)
  if record and reply[1] >= 0 then
    redis.call('HSET', record, 'f', fingerprint, 'o', reply[1], 'd', reply[2], 'a', ARGV[12])
    redis.call('PEXPIREAT', record, idempotent_until)
    redis.call('SADD', records, record)
    if redis.call('PEXPIRETIME', records) < tonumber(idempotent_until) then  -- -1: none yet
      redis.call('PEXPIREAT', records, idempotent_until)
    end
  end
  if log_stream then
    if call_json then
      redis.call('XADD', log_stream, '*', 'e', ARGV[8], 'r', reply[1], 'c', call_json)
    else
      redis.call('XADD', log_stream, '*', 'e', ARGV[8], 'r', reply[1])
    end
  end
  return reply
end

if bucket then
  local left = take_token(bucket, now, tonumber(ARGV[6]), tonumber(ARGV[7]))
  if left < 0 then
    return logged({-2, -left})
  end
end

if claim and not claim_key(claim, fingerprint, idempotent_until) then
  return logged({-3, ''})
end
if record then
  local first = redis.call('HMGET', record, 'f', 'o', 'd', 'a')
  if first[1] then
    if first[1] ~= fingerprint then
      return logged({-3, ''})
    end
    return {3, tonumber(first[2]), first[3], first[4]}
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
