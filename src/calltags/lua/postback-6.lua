--[[
  postback-6: write the tags of a batch of postbacks through one postback key (a single
  postback is a batch of one), each atomically choosing where its tags go: the caller's
  live call, the call that ended inside the key's cut-off, or the pending hash that the
  caller's next call claims. An idempotent postback (one with an idempotency key)
  writes only if its key has no answer yet: a repeat gets the first answer back and
  writes nothing, and the key with other parameters is refused. The postbacks are
  written one after the other, in order, each exactly as if it came alone; one script
  call saves the web process and Redis a command, a reply and a Lua call a postback.

  Every postback brings its caller's two keys and its optional ones, named by its
  letters: the idempotency record (in the caller's slot, so on Redis Cluster too) and,
  on a single Redis node only, the idempotency claim. The batch's optional keys, named
  by ARGV[7] and given first, are on a single node only: the log stream to append each
  entry to and the key's token bucket. On Redis Cluster those live in other slots, so
  the caller takes the rate limit's tokens (ratelimit-2.lua), claims the idempotency
  keys (claim-1.lua) and appends the log entries (XADD) itself, and a batch holds only
  callers of one slot.

  Input:
    KEYS     the batch's optional keys, in the order ARGV[7] names them:
               l  the postback log stream
               b  the key's token bucket
             then for each postback:
               its pending tags hash   {caller}:p
               its calls hash          {caller}:c
               its optional keys, in the order its letters name them:
                 i  the idempotency record {caller}:i:KEY_ID:TOKEN, a hash: the
                    fingerprint f, outcome o, detail d and answer a of the first write
                 s  with i: the set {caller}:is of the caller's records' names, which
                    lives as long as its longest-lived record (an erase reads it)
                 f  the idempotency claim idem:{KEY_ID:TOKEN}: the first fingerprint
    ARGV[1]  now, ms since the epoch
    ARGV[2]  the key's end-call cut-off, ms
    ARGV[3]  the key's storage duration, ms
    ARGV[4]  calls hash lifetime after a write, ms
    ARGV[5]  rate limit, tokens a second (with a bucket)
    ARGV[6]  rate limit burst (with a bucket)
    ARGV[7]  the batch's letters (l, b)
    then for each postback:
      its head: the number of tag arguments that follow its own (2 a tag), or, for a
        postback with letters or a call_uuid, "COUNT:LETTERS:CALL_UUID": its letters
        (i, s, f) and the call_uuid it addresses ("" to pick by the caller's state)
      its log entry, JSON, or "" (not logged): with a log stream, appended as field e,
        the outcome code as field r and the call JSON, when tags went to a call, as
        field c
      with i or f only (a postback without an idempotency key passes no more arguments
      than it needs): the fingerprint of its parameters, when its idempotency records
      expire (ms since the epoch), and the answer's parts the write does not decide,
      kept in the record (with i)
      tag name, tag value ("publisher_id:key_id:set_at_ms|value"), ...

  Output: one reply a postback, in order:
    {0, expires_at_ms}         no live call, none ended inside the cut-off: tags pending
    {1, call_uuid, call_json}  applied to the live call; the call as now stored
    {2, call_uuid, call_json}  applied to the completed call inside the cut-off
    {3, outcome, detail, answer}  a repeat of an idempotent postback: the first one's
                               outcome (0, 1 or 2), its detail and answer; nothing
                               written, nothing logged (the caller logs the replay)
    {-1, ""}                   its call_uuid names no call of this caller
    {-2, retry_after_ms}       the key's rate limit refused it; nothing written
    {-3, ""}                   the idempotency key's first postback had other
                               parameters (or another caller); nothing written
]]
-- @include take_token.lua
-- @include claim_key.lua
local now = tonumber(ARGV[1])
local cutoff_ms = tonumber(ARGV[2])
local storage_ms = tonumber(ARGV[3])
local call_ttl_ms = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local find = string.find

local k = 1  -- the next key
local log_stream, bucket
if find(ARGV[7], 'l', 1, true) then
  log_stream = KEYS[k]
  k = k + 1
end
if find(ARGV[7], 'b', 1, true) then
  bucket = KEYS[k]
  k = k + 1
end

-- The postback being written: its keys and arguments (locals of the chunk, set anew for
-- each postback: no table a postback).
local pending, calls, record, records, claim
local entry, fingerprint, idempotent_until, answer, first_tag, last_tag

-- The reply, logged; a write's (outcome 0, 1 or 2) also kept as the idempotency key's
-- answer.
local function logged(reply, call_json)
  if record and reply[1] >= 0 then
    redis.call('HSET', record, 'f', fingerprint, 'o', reply[1], 'd', reply[2], 'a', answer)
    redis.call('PEXPIREAT', record, idempotent_until)
    redis.call('SADD', records, record)
    if redis.call('PEXPIRETIME', records) < tonumber(idempotent_until) then  -- -1: none yet
      redis.call('PEXPIREAT', records, idempotent_until)
    end
  end
  if log_stream and entry ~= '' then
    if call_json then
      redis.call('XADD', log_stream, '*', 'e', entry, 'r', reply[1], 'c', call_json)
    else
      redis.call('XADD', log_stream, '*', 'e', entry, 'r', reply[1])
    end
  end
  return reply
end

-- The call's JSON after the tags are written (see connect-3.lua for its format).
local function apply(uuid, call)
  for i = first_tag, last_tag, 2 do
    call.t[ARGV[i]] = ARGV[i + 1]
  end
  call.v = (call.v or 0) + 1
  local raw = cjson.encode(call)
  redis.call('HSET', calls, uuid, raw)
  redis.call('PEXPIRE', calls, call_ttl_ms)
  return raw
end

-- (1 or 2, call_json) when the call took the tags, 0 when it ended too long ago,
-- nil when unknown.
local function try_call(uuid)
  local raw = redis.call('HGET', calls, uuid)
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

local function write(target)
  if bucket then
    local left = take_token(bucket, now, rate, burst)
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

  if target ~= '' then
    local outcome, call_json = try_call(target)
    if outcome == nil then
      return logged({-1, ''})
    end
    if outcome > 0 then
      return logged({outcome, target, call_json}, call_json)
    end
  else
    local pointers = redis.call('HMGET', calls, '@live', '@last')
    for _, uuid in ipairs(pointers) do
      if uuid then
        local outcome, call_json = try_call(uuid)
        if outcome and outcome > 0 then
          return logged({outcome, uuid, call_json}, call_json)
        end
      end
    end
  end

  redis.call('HSET', pending, unpack(ARGV, first_tag, last_tag))
  -- The longer of the key's storage and the hash's own expiry: GT lengthens a shorter
  -- one (the common case: one call), NX gives a new hash its first.
  local ttl = storage_ms
  if redis.call('PEXPIRE', pending, storage_ms, 'GT') == 0
      and redis.call('PEXPIRE', pending, storage_ms, 'NX') == 0 then
    ttl = redis.call('PTTL', pending)
  end
  return logged({0, now + ttl})
end

local replies = {}
local a = 8  -- the next argument
while a <= #ARGV do
  local header = ARGV[a]
  local tag_arguments = tonumber(header)
  local letters, target = '', ''
  if not tag_arguments then
    local count
    count, letters, target = string.match(header, '^(%d+):(%a*):(.*)$')
    tag_arguments = tonumber(count)
  end
  entry = ARGV[a + 1]
  a = a + 2
  pending, calls = KEYS[k], KEYS[k + 1]
  k = k + 2
  record, records, claim = nil, nil, nil
  if letters ~= '' then
    if find(letters, 'i', 1, true) then
      record = KEYS[k]
      k = k + 1
    end
    if find(letters, 's', 1, true) then
      records = KEYS[k]
      k = k + 1
    end
    if find(letters, 'f', 1, true) then
      claim = KEYS[k]
      k = k + 1
    end
    fingerprint, idempotent_until, answer = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    a = a + 3
  end
  first_tag, last_tag = a, a + tag_arguments - 1
  a = a + tag_arguments
  replies[#replies + 1] = write(target)
end
return replies
