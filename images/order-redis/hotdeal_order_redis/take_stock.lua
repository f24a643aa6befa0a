-- One atomic step per order: check the books are not behind what was already answered,
-- check and take the stock, enforce the event rules, record the order (stream mode:
-- enqueue it for the writer). Redis runs a script alone, so no other order can
-- interleave: the stock never goes below zero. Every refusal returns before any write.
--
-- KEYS: 1 books (hash), 2 buyers, 3 buyer-orders, 4 orders, 5 stream, 6 idempotency key
--       (KEYS[6] is a placeholder of the product's slot when ARGV[8] is ""), 7 the
--       instance mark (on one Redis; a placeholder in a cluster, ARGV[13] "0"), 8 the
--       product's sync mark (written before an answer that names an earlier take),
--       9 the product's waiting room (hotdeal.room), 10 its inline takes (hash: inline
--       mode records each take until it is settled, hotdeal.inline), 11 its holds
--       (hash), 12 their deadlines (sorted set): reservations, hotdeal.model
-- ARGV: 1 quantity, 2 user id, 3 per-user limit (0 = none), 4 order id, 5 product id,
--       6 "stream" or "inline", 7 idempotency TTL s, 8 the Idempotency-Key or "",
--       9/10 the highest (epoch, seq) this client has answered 201 for (the fence),
--       11 "1" to list the order under the buyer (not for the workshop's shared buyer),
--       12 the run_id of the server this connection reached, 13 "1" if KEYS[7] is real,
--       14 the room id of the order's verified pass ("" without one), 15 how long the
--       order waited in the service before this take, ms (the room's automatic rate)
-- Returns {status, ...}:
--   {"ok", remaining, order_id, ordered_at_ms, epoch, seq, generation, expires_ms}
--       expires_ms: the hold's deadline under reservations, "" for an outright sale
--   {"replay", remaining, order_id, ordered_at_ms, state, epoch, index record}
--       state: "done" | "pending"
--   {"key_reused", first_quantity}  {"unknown"}  {"not_open", opens_at_ms}
--   {"limit_exceeded", bought, "id id ..."}  {"sold_out", remaining, held}  {"paused", reason}
--   {"unvalidated"}  {"pass_required"}
local b = redis.call("HMGET", KEYS[1], "quantity", "seq", "epoch", "generation", "opens_at",
  "paused", "sold", "validated", "window_ms", "held")
if not b[1] then
  -- No books: an unknown product, unless this server came back empty and the database's
  -- products are not restored yet (the instance mark is not this server's).
  if ARGV[13] == "1" and redis.call("GET", KEYS[7]) ~= ARGV[12] then
    return {"unvalidated"}
  end
  return {"unknown"}
end
if b[6] then
  return {"paused", b[6]}
end
-- Reservations: a hold is settled through the stream (hotdeal.model); an inline take
-- has no way to record its confirm or release.
local window = tonumber(b[9] or "0") or 0
if window > 0 and ARGV[6] == "inline" then
  return {"paused", "reservations need the stream write mode (HOTDEAL_ORDER_WRITE=stream)"}
end
-- Books last checked against the database on another server (this one restarted, was
-- restored or promoted): they may have forgotten sales. Nothing is sold until they are
-- checked again (hotdeal.fence.validate), whichever pod takes the next order.
if b[8] ~= ARGV[12] then
  return {"unvalidated"}
end

-- Fence: a client that answered 201 for take (epoch, seq) must never see books older
-- than that. If it does, Redis came back from an older state (restart from an older
-- AOF, failover to a lagging replica, a restore): stop selling until repaired.
local epoch, seq = tonumber(b[3]), tonumber(b[2])
local seen_epoch, seen_seq = tonumber(ARGV[9]), tonumber(ARGV[10])
if epoch < seen_epoch or (epoch == seen_epoch and seq < seen_seq) then
  local reason = "rollback: books at " .. epoch .. "/" .. seq ..
    " but take " .. seen_epoch .. "/" .. seen_seq .. " was already answered"
  redis.call("HSET", KEYS[1], "paused", reason)
  return {"paused", reason}
end

local qty = tonumber(ARGV[1])
local idem = ARGV[8]
if idem ~= "" then
  local first = redis.call("HMGET", KEYS[6], "quantity", "remaining", "order_id",
    "ordered_at", "state", "epoch")
  if first[1] then
    -- A write, so the durability wait after this script covers the original take too
    -- (the log is sequential): an answer about that take only once it is durable.
    redis.call("SET", KEYS[8], "1")
    if tonumber(first[1]) ~= qty then
      return {"key_reused", first[1]}
    end
    return {"replay", first[2], first[3], first[4], first[5] or "done", first[6] or "0",
      redis.call("HGET", KEYS[4], first[3]) or ""}
  end
end

-- Nothing left: sold out, whatever the pass (a buyer needs no room to learn it). Only
-- then: with units left, a buyer without a pass learns nothing of how many.
local stock = tonumber(b[1])
if stock <= 0 then
  return {"sold_out", stock, b[10] or "0"}
end

-- The waiting room: while it is on for this event, only an order with a pass of this
-- room is sold (a replay, above, sells nothing and needs none).
local room = redis.call("HMGET", KEYS[9], "generation", "id", "auto", "served", "slow")
local in_room = room[1] and room[1] == b[4]
if in_room and ARGV[14] ~= room[2] then
  return {"pass_required"}
end

local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if b[5] and now_ms < tonumber(b[5]) then
  return {"not_open", b[5]}
end

local user = ARGV[2]
local limit = tonumber(ARGV[3])
if limit > 0 then
  local bought = tonumber(redis.call("HGET", KEYS[2], user) or "0")
  if bought + qty > limit then
    redis.call("SET", KEYS[8], "1")  -- it names the buyer's orders: only durable ones
    -- The orders that count (a released hold gave its units back).
    local counted = {}
    for id in string.gmatch(redis.call("HGET", KEYS[3], user) or "", "%S+") do
      local state = string.match(redis.call("HGET", KEYS[4], id) or "", "^%S+ %S+ %S+ (%S+)")
      if state ~= "expired" and state ~= "cancelled" then
        counted[#counted + 1] = id
      end
    end
    return {"limit_exceeded", bought, table.concat(counted, " ")}
  end
end

if stock < qty then
  return {"sold_out", stock, b[10] or "0"}
end

local remaining = stock - qty
seq = seq + 1
local order_id = ARGV[4]
redis.call("HSET", KEYS[1], "quantity", remaining, "sold", tonumber(b[7]) + qty, "seq", seq)
local record = user .. " " .. qty .. " " .. now_ms
local expires = ""
if ARGV[6] == "inline" then
  redis.call("HINCRBY", KEYS[1], "inline_pending", qty)
  redis.call("HSET", KEYS[10], order_id, qty .. " " .. now_ms .. " " .. user .. " " .. idem)
elseif window > 0 then
  -- A hold: the units are taken until it is confirmed, or released at its deadline.
  expires = now_ms + window
  record = record .. " reserved " .. expires
  redis.call("HINCRBY", KEYS[1], "held", qty)
  redis.call("HSET", KEYS[11], order_id,
    qty .. " " .. expires .. " " .. user .. " " .. epoch .. " " .. seq .. " " .. idem)
  redis.call("ZADD", KEYS[12], expires, order_id)
  redis.call("XADD", KEYS[5], "*",
    "order_id", order_id, "product_id", ARGV[5], "generation", b[4], "user_id", user,
    "quantity", qty, "ordered_at", now_ms, "epoch", epoch, "seq", seq, "idem", idem,
    "state", "reserved", "expires_at", expires)
else
  redis.call("XADD", KEYS[5], "*",
    "order_id", order_id, "product_id", ARGV[5], "generation", b[4], "user_id", user,
    "quantity", qty, "ordered_at", now_ms, "epoch", epoch, "seq", seq, "idem", idem)
end
redis.call("HINCRBY", KEYS[2], user, qty)
if ARGV[11] == "1" then
  local listed = redis.call("HGET", KEYS[3], user)
  redis.call("HSET", KEYS[3], user, listed and (listed .. " " .. order_id) or order_id)
end
redis.call("HSET", KEYS[4], order_id, record)
if idem ~= "" then
  redis.call("HSET", KEYS[6], "quantity", qty, "remaining", remaining, "order_id", order_id,
    "ordered_at", now_ms, "state", ARGV[6] == "inline" and "pending" or "done",
    "epoch", epoch)
  redis.call("EXPIRE", KEYS[6], tonumber(ARGV[7]))
end
-- The room's automatic rate counts its sales, and those that waited too long (room.lua).
-- HSET of numbers read leniently: nothing here can fail after the sale's writes.
local target = in_room and tonumber(room[3] or "") or 0
if target > 0 then
  local function count(raw)
    local n = tonumber(raw or "") or 0
    return (n >= 0 and n < 1e9) and math.floor(n) + 1 or 1
  end
  redis.call("HSET", KEYS[9], "served", count(room[4]))
  if (tonumber(ARGV[15]) or 0) > target then
    redis.call("HSET", KEYS[9], "slow", count(room[5]))
  end
end
return {"ok", remaining, order_id, tostring(now_ms), epoch, seq, b[4], tostring(expires)}
