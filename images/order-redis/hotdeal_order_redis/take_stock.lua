-- One atomic step per order: check and take the stock, enforce the event rules and
-- (write-behind mode) enqueue the order record. Redis runs a script alone, so no
-- other order can interleave: the stock never goes below zero.
--
-- KEYS: 1 quantity, 2 sold, 3 buyers, 4 opens-at, 5 orders stream, 6 idempotency key
--       (KEYS[6] is "" when the request has no Idempotency-Key)
-- ARGV: 1 quantity, 2 user id, 3 per-user limit (0 = none), 4 order id, 5 product id,
--       6 "1" to enqueue into the stream, 7 idempotency TTL seconds
-- Returns {status, ...}:
--   {"ok", remaining, order_id, ordered_at_ms}     {"replay", remaining, order_id, ordered_at_ms}
--   {"key_reused", first_quantity}  {"unknown"}  {"not_open", opens_at_ms}
--   {"limit_exceeded", bought}      {"sold_out", remaining}
local qty = tonumber(ARGV[1])

if KEYS[6] ~= "" then
  local first = redis.call("HMGET", KEYS[6], "quantity", "remaining", "order_id", "ordered_at")
  if first[1] then
    if tonumber(first[1]) ~= qty then
      return {"key_reused", first[1]}
    end
    return {"replay", tonumber(first[2]), first[3], first[4]}
  end
end

local stock = redis.call("GET", KEYS[1])
if not stock then
  return {"unknown"}
end
stock = tonumber(stock)

local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local opens_at = redis.call("GET", KEYS[4])
if opens_at and now_ms < tonumber(opens_at) then
  return {"not_open", opens_at}
end

local limit = tonumber(ARGV[3])
if limit > 0 then
  local bought = tonumber(redis.call("HGET", KEYS[3], ARGV[2]) or "0")
  if bought + qty > limit then
    return {"limit_exceeded", bought}
  end
end

if stock < qty then
  return {"sold_out", stock}
end

local remaining = redis.call("DECRBY", KEYS[1], qty)
redis.call("INCRBY", KEYS[2], qty)
redis.call("HINCRBY", KEYS[3], ARGV[2], qty)
if ARGV[6] == "1" then
  redis.call("XADD", KEYS[5], "*",
    "order_id", ARGV[4], "product_id", ARGV[5], "user_id", ARGV[2],
    "quantity", qty, "ordered_at", now_ms)
end
if KEYS[6] ~= "" then
  redis.call("HSET", KEYS[6], "quantity", qty, "remaining", remaining,
    "order_id", ARGV[4], "ordered_at", now_ms)
  redis.call("EXPIRE", KEYS[6], tonumber(ARGV[7]))
end
return {"ok", remaining, ARGV[4], tostring(now_ms)}
