-- Rate-limit checks, atomic in Redis: every gateway sharing this Redis
-- counts in the same place, and no two checks interleave. One call decides
-- a batch of checks (those a gateway worker gathered while its previous
-- call was on the wire), in order, each seeing the ones before it: the same
-- answers as one call per check. The arithmetic is algorithm.rs's, in
-- microseconds of the Redis server's clock (one clock for every gateway).
--
-- KEYS[i]  check i's counters: a string, "<t> <curr> <prev>" per limit in
--          the policy's order, space-separated (t: window number, or the
--          token bucket's theoretical arrival time); absent, or not such a
--          string: no request counted yet
-- ARGV[i]  check i's policy: "<algorithm> <requests> <window us> <burst>"
--          with one triple per limit; algorithm: s (sliding window),
--          f (fixed window) or t (token bucket)
-- Returns  per check: allowed (1/0), limit, remaining, reset (us),
--          retry_after (us)
--
-- Redis work per call: TIME, one MGET of every distinct key, and one SET
-- (with its expiry) per key the call counted a request on; so a check
-- costs about the same whether or not the batch's other checks share its
-- key. (Counters of the version before this one were hashes under
-- `xgate:rl:`; this one's keys are under `xgate:rl2:`, so the two never
-- meet.)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- Parsed policies, by their ARGV string.
local policies = {}
local function policy(spec)
  local p = policies[spec]
  if p then return p end
  p = {algorithm = string.sub(spec, 1, 1), limits = {}}
  for r, w, b in string.gmatch(spec, '(%d+) (%d+) (%d+)') do
    p.limits[#p.limits + 1] = {tonumber(r), tonumber(w), tonumber(b)}
  end
  policies[spec] = p
  return p
end

-- Every key's counters, read with one MGET: by key, {states, ttl (ms),
-- dirty}; states[i] is limit i's {t, curr, prev}. Policies sharing a name
-- share a key's states by position, as they share its limits.
local counters = {}
local keys = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  if not counters[key] then
    counters[key] = true
    keys[#keys + 1] = key
  end
end
local raw = redis.call('MGET', unpack(keys))
for i, key in ipairs(keys) do
  local states = {}
  if raw[i] then
    for t, curr, prev in string.gmatch(raw[i], '(%d+) (%d+) (%d+)') do
      states[#states + 1] = {tonumber(t), tonumber(curr), tonumber(prev)}
    end
  end
  counters[key] = {states = states, ttl = 1, dirty = false}
end

-- Integers as digits: '%.0f', as tostring would write a microsecond time
-- with an exponent.
local function encode(states)
  if #states == 1 then
    local s = states[1]
    return string.format('%.0f %.0f %.0f', s[1], s[2], s[3])
  end
  local parts = {}
  for i, s in ipairs(states) do
    parts[i] = string.format('%.0f %.0f %.0f', s[1], s[2], s[3])
  end
  return table.concat(parts, ' ')
end

local function room(w, c, free)
  return w - math.min(math.floor((free - 1) * w / math.max(c, 1)), w)
end

local out = {}
local n = 0
for k = 1, #KEYS do
  local p = policy(ARGV[k])
  local c = counters[KEYS[k]]
  local states = c.states
  local algorithm = p.algorithm
  -- The answer the client sees, over every limit: a refusal over an
  -- admission, the longest wait among refusals, the fewest remaining
  -- among admissions. (a: allowed, l: limit, r: remaining, z: reset,
  -- y: retry after; -1: no limit looked at yet.)
  local a, l, r, z, y = -1, 0, 0, 0, 0
  for i, lim in ipairs(p.limits) do
    local requests, w, burst = lim[1], lim[2], lim[3]
    local s = states[i]
    if not s then
      s = {0, 0, 0}
      states[i] = s
    end
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
      local s = states[i]
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

for _, key in ipairs(keys) do
  local c = counters[key]
  if c.dirty then
    redis.call('SET', key, encode(c.states), 'PX', c.ttl)
  end
end
return out
