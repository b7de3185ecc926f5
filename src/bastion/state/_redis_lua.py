"""The Lua scripts of the Redis state store (``_redis``): each operation that decides something
runs as one script, so it is atomic across every process."""

# Counts are read and returned as the strings Redis keeps (Lua numbers are doubles: exact only
# to 2**53) and compared as integer strings. A counter of a bounded window is also named, with
# the time it expires, in a second index, from which each write prunes up to 16 expired names.
COUNTER_LUA = """
local function less(a, b)  -- integer strings, exactly
  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if na ~= nb then return na end
  if na then a, b = b:sub(2), a:sub(2) end
  if #a ~= #b then return #a < #b end
  return a < b
end
local function current()  -- the next window stored (a worker whose clock runs ahead): that one
  local w = redis.call('HGET', KEYS[1], 'w')
  if w and (w == ARGV[2] or tonumber(w) == tonumber(ARGV[2]) + 1) then
    return redis.call('HGET', KEYS[1], 'n')
  end
  return false
end
local function bump(n, by)
  if not n then redis.call('HSET', KEYS[1], 'w', ARGV[2], 'n', 0) end
  redis.call('HINCRBY', KEYS[1], 'n', by)
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  if ARGV[4] ~= '0' then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
    for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 16)) do
      if redis.call('EXISTS', ARGV[5] .. k) == 0 then redis.call('ZREM', KEYS[2], k) end
      redis.call('ZREM', KEYS[3], k)
    end
  end
  return redis.call('HGET', KEYS[1], 'n')
end
"""
# KEYS: counter, index, expiry index. ARGV: name, window, limit, time to live in ms (0: never),
# counter key prefix.
TAKE = COUNTER_LUA + """
local n = current()
if not less(n or '0', ARGV[3]) then return {0, n or '0'} end
return {1, bump(n, 1)}
"""
# KEYS, ARGV: as TAKE, with the amount in place of the limit.
ADD = COUNTER_LUA + """
return bump(current(), ARGV[3])
"""
# KEYS: as TAKE, then the facts hash. ARGV: as ADD (amount 1), then the fact's body, then a
# ceiling ('' for none): a count already at it (an ended session's) takes no fact and no count.
ADD_FACT = COUNTER_LUA + """
local c = current()
if ARGV[7] ~= '' and c and not less(c, ARGV[7]) then return c end
local n = bump(c, 1)
redis.call('HSET', KEYS[4], n, ARGV[6])
return n
"""
# KEYS: index. ARGV: range min, range max, counter key prefix, window. Drops expired names.
COUNTS = """
local out = {}
for _, k in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])) do
  local h = redis.call('HMGET', ARGV[3] .. k, 'w', 'n')
  if not h[1] then redis.call('ZREM', KEYS[1], k)
  elseif h[1] == ARGV[4] or tonumber(h[1]) == tonumber(ARGV[4]) + 1 then
    out[#out + 1] = k; out[#out + 1] = h[2]
  end
end
return out
"""
# KEYS: index. ARGV: range min, range max, counter key prefix.
CLEAR = """
local gone = 0
for _, k in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])) do
  gone = gone + redis.call('DEL', ARGV[3] .. k)
end
redis.call('ZREMRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])
return gone
"""
# KEYS: index. ARGV: counter key prefix, names...
DELETE = """
local gone = 0
for i = 2, #ARGV do
  gone = gone + redis.call('DEL', ARGV[1] .. ARGV[i])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return gone
"""
# KEYS: approval, index. ARGV: created, then field, value pairs.
PUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
return 1
"""
# KEYS: approval. ARGV: now, status, decided_by, note.
DECIDE = """
local h = redis.call('HMGET', KEYS[1], 'status', 'expires')
if not h[1] then return {'missing'} end
if h[1] ~= 'pending' then return {'already ' .. h[1]} end
if tonumber(ARGV[1]) >= tonumber(h[2]) then return {'expired'} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'decided_by', ARGV[3], 'note', ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
# KEYS: approval. ARGV: digest, now.
CONSUME = """
local h = redis.call('HMGET', KEYS[1], 'status', 'digest', 'expires')
if h[1] ~= 'granted' or h[2] ~= ARGV[1] or tonumber(ARGV[2]) >= tonumber(h[3]) then
  return false
end
redis.call('HSET', KEYS[1], 'status', 'used')
return redis.call('HGETALL', KEYS[1])
"""
