-- One rate-limit check, atomic in Redis: every gateway sharing this Redis
-- counts in the same place, and no two checks interleave. The arithmetic
-- is algorithm.rs's, in microseconds of the Redis server's clock (one
-- clock for every gateway).
--
-- KEYS[1]  the counters of one key: a hash, one field per limit, each
--          "<t> <curr> <prev>" (t: window number, or the token bucket's
--          theoretical arrival time)
-- ARGV[1]  algorithm: "sliding_window", "fixed_window" or "token_bucket"
-- ARGV[2..] per limit: requests, window (us), burst
-- Returns  {allowed (1/0), limit, remaining, reset (us), retry_after (us)}
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local algorithm = ARGV[1]
local n = (#ARGV - 1) / 3
local fields = {}
for i = 1, n do fields[i] = tostring(i) end
local raw = redis.call('HMGET', KEYS[1], unpack(fields))

local states = {}
local answer = nil
local function better(a, d)
  if a == nil then return d end
  if a[1] == 1 and d[1] == 0 then return d end
  if a[1] == 0 and d[1] == 1 then return a end
  if a[1] == 0 then
    if d[5] > a[5] then return d end
    return a
  end
  if d[3] < a[3] then return d end
  return a
end

for i = 1, n do
  local requests = tonumber(ARGV[3 * i - 1])
  local w = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local t, curr, prev = 0, 0, 0
  if raw[i] then
    local a, b, c = string.match(raw[i], '^(%d+) (%d+) (%d+)$')
    if a then t, curr, prev = tonumber(a), tonumber(b), tonumber(c) end
  end
  local d
  if algorithm == 'token_bucket' then
    local interval = math.max(math.floor(w / requests), 1)
    local tolerance = interval * burst
    local tat = math.max(t, now)
    local after = tat + interval - now
    if after <= tolerance then
      d = {1, burst, math.floor((tolerance - after) / interval), after, 0}
    else
      d = {0, burst, 0, tat - now, after - tolerance}
    end
  else
    local window = math.floor(now / w)
    if window ~= t then
      if window == t + 1 and algorithm == 'sliding_window' then prev = curr else prev = 0 end
      curr = 0
      t = window
    end
    local elapsed = now - window * w
    local count = curr
    if algorithm == 'sliding_window' then
      count = curr + math.ceil(prev * (w - elapsed) / w)
    end
    if count < requests then
      d = {1, requests, requests - count - 1, w - elapsed, 0}
    else
      local wait = w - elapsed
      if algorithm == 'sliding_window' then
        local function room(c, free)
          return w - math.min(math.floor((free - 1) * w / math.max(c, 1)), w)
        end
        if curr < requests then
          wait = math.max(room(prev, requests - curr) - elapsed, 1)
        else
          wait = (w - elapsed) + room(curr, requests)
        end
      end
      d = {0, requests, 0, w - elapsed, wait}
    end
  end
  states[i] = {t, curr, prev, requests, w}
  answer = better(answer, d)
end

if answer[1] == 1 then
  local ttl = 1
  local values = {}
  for i = 1, n do
    local s = states[i]
    local expires
    if algorithm == 'token_bucket' then
      s[1] = math.max(s[1], now) + math.max(math.floor(s[5] / s[4]), 1)
      expires = s[1] - now
    else
      s[2] = s[2] + 1
      expires = (s[1] + 2) * s[5] - now
    end
    ttl = math.max(ttl, math.ceil(expires / 1000))
    values[#values + 1] = tostring(i)
    values[#values + 1] = string.format('%.0f %.0f %.0f', s[1], s[2], s[3])
  end
  redis.call('HSET', KEYS[1], unpack(values))
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return answer
