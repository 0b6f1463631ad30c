-- Rate-limit checks, atomic in Redis: every gateway sharing this Redis
-- counts in the same place, and no two checks interleave. One call decides
-- a batch of checks (those a gateway worker gathered while its previous
-- call was on the wire), in order, each seeing the ones before it: the same
-- answers as one call per check. The arithmetic is algorithm.rs's, in
-- microseconds of the Redis server's clock (one clock for every gateway).
--
-- KEYS[i]  check i's counters: a hash, one field per limit, each
--          "<t> <curr> <prev>" (t: window number, or the token bucket's
--          theoretical arrival time)
-- ARGV[i]  check i's policy: "<algorithm> <requests> <window us> <burst>"
--          with one triple per limit; algorithm: s (sliding window),
--          f (fixed window) or t (token bucket)
-- Returns  per check: allowed (1/0), limit, remaining, reset (us),
--          retry_after (us)
--
-- A key's hash is read once per call and written once at its end (HSET and
-- PEXPIRE), however many checks of the call count it.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- Parsed policies, by their ARGV string.
local policies = {}
local function policy(spec)
  local p = policies[spec]
  if p then return p end
  p = {algorithm = string.sub(spec, 1, 1), limits = {}, fields = {}}
  for r, w, b in string.gmatch(spec, '(%d+) (%d+) (%d+)') do
    local n = #p.limits + 1
    p.limits[n] = {tonumber(r), tonumber(w), tonumber(b)}
    p.fields[n] = tostring(n)
  end
  policies[spec] = p
  return p
end

-- Counters read so far, by key: {policy, states, ttl (ms), dirty}.
local counters = {}
local order = {}

local function flush(key, c)
  if not c.dirty then return end
  local values = {}
  for i, s in ipairs(c.states) do
    values[#values + 1] = tostring(i)
    values[#values + 1] = string.format('%.0f %.0f %.0f', s[1], s[2], s[3])
  end
  redis.call('HSET', key, unpack(values))
  redis.call('PEXPIRE', key, c.ttl)
  c.dirty = false
end

local function load(key, p)
  local c = counters[key]
  if c and c.policy == p then return c end
  if c then flush(key, c) end
  local raw = redis.call('HMGET', key, unpack(p.fields))
  local states = {}
  for i = 1, #p.limits do
    local t, curr, prev = 0, 0, 0
    if raw[i] then
      local a, b, d = string.match(raw[i], '^(%d+) (%d+) (%d+)$')
      if a then t, curr, prev = tonumber(a), tonumber(b), tonumber(d) end
    end
    states[i] = {t, curr, prev}
  end
  if not c then order[#order + 1] = key end
  c = {policy = p, states = states, ttl = 1, dirty = false}
  counters[key] = c
  return c
end

local function room(w, c, free)
  return w - math.min(math.floor((free - 1) * w / math.max(c, 1)), w)
end

local out = {}
local n = 0
for k = 1, #KEYS do
  local p = policy(ARGV[k])
  local c = load(KEYS[k], p)
  local algorithm = p.algorithm
  -- The answer the client sees, over every limit: a refusal over an
  -- admission, the longest wait among refusals, the fewest remaining
  -- among admissions. (a: allowed, l: limit, r: remaining, z: reset,
  -- y: retry after; -1: no limit looked at yet.)
  local a, l, r, z, y = -1, 0, 0, 0, 0
  for i, lim in ipairs(p.limits) do
    local requests, w, burst = lim[1], lim[2], lim[3]
    local s = c.states[i]
    local da, dl, dr, dz, dy
    if algorithm == 't' then
      local interval = math.max(math.floor(w / requests), 1)
      local tolerance = interval * burst
      local tat = math.max(s[1], now)
      local after = tat + interval - now
      if after <= tolerance then
        da, dl, dr, dz, dy = 1, burst, math.floor((tolerance - after) / interval), after, 0
      else
        da, dl, dr, dz, dy = 0, burst, 0, tat - now, after - tolerance
      end
    else
      local window = math.floor(now / w)
      if window ~= s[1] then
        if window == s[1] + 1 and algorithm == 's' then s[3] = s[2] else s[3] = 0 end
        s[2] = 0
        s[1] = window
      end
      local curr, prev = s[2], s[3]
      local elapsed = now - window * w
      local count = curr
      if algorithm == 's' then
        count = curr + math.ceil(prev * (w - elapsed) / w)
      end
      if count < requests then
        da, dl, dr, dz, dy = 1, requests, requests - count - 1, w - elapsed, 0
      else
        local wait = w - elapsed
        if algorithm == 's' then
          if curr < requests then
            wait = math.max(room(w, prev, requests - curr) - elapsed, 1)
          else
            wait = (w - elapsed) + room(w, curr, requests)
          end
        end
        da, dl, dr, dz, dy = 0, requests, 0, w - elapsed, wait
      end
    end
    if a == -1 or (a == 1 and da == 0)
        or (a == 0 and da == 0 and dy > y)
        or (a == 1 and da == 1 and dr < r) then
      a, l, r, z, y = da, dl, dr, dz, dy
    end
  end

  if a == 1 then
    for i, lim in ipairs(p.limits) do
      local s = c.states[i]
      local expires
      if algorithm == 't' then
        s[1] = math.max(s[1], now) + math.max(math.floor(lim[2] / lim[1]), 1)
        expires = s[1] - now
      else
        s[2] = s[2] + 1
        expires = (s[1] + 2) * lim[2] - now
      end
      c.ttl = math.max(c.ttl, math.ceil(expires / 1000))
    end
    c.dirty = true
  end
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = a, l, r, z, y
  n = n + 5
end

for _, key in ipairs(order) do flush(key, counters[key]) end
return out
