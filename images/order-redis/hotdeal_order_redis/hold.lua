#!lua flags=allow-oom
-- Reservations (hotdeal.model): settle a hold, in one atomic step, exactly once. A hold
-- is in the holds hash until it is settled; whoever removes it there settles it:
--   confirm: the payment came in time: the units stay taken, the hold is "confirmed";
--   cancel:  the buyer or a service releases it: "cancelled", the units go back;
--   expire:  up to ARGV[2] holds whose deadline passed (Redis's clock): "expired".
-- A confirm or cancel that finds the deadline passed expires the hold itself, so a late
-- payment is refused at the very instant the unit could be sold again, whichever pod or
-- sweeper looks first. A release puts back the stock, the buyer's count and forgets the
-- Idempotency-Key (a retry with it is a new order). Each settle is a change with its
-- own place in the books (seq), enqueued for the writers with the whole order.
-- allow-oom: it only settles holds already made (a full Redis must not keep them).
--
-- KEYS: 1 books, 2 holds (hash), 3 deadlines (sorted set), 4 orders (index),
--       5 buyers, 6 stream, 7 the product's sync mark, 8 the instance mark (on one
--       Redis; a placeholder in a cluster, ARGV[8] "0")
-- ARGV: 1 "confirm" | "cancel" | "expire", 2 order id (or, expire: how many at most),
--       3 run_id of this connection's server, 4/5 the highest (epoch, seq) this client
--       has answered (the fence; "0" "0" for a sweeper), 6 product id,
--       7 the product's Idempotency-Key prefix (hotdeal.model.keys.idempotency_prefix),
--       8 "1" if KEYS[8] is real
-- Returns:
--   {"confirmed", epoch, seq} | {"cancelled", epoch, seq} | {"expired", epoch, seq}
--       (epoch, seq: the change's, or "0" "0" when it was settled before: a replay)
--   {"not_reserved"} an outright sale; {"unknown"} no such order; {"paused", reason}
--   (also for a hold a settle left half-done, which it pauses for a repair);
--   {"unvalidated"}; expire: {"expired_batch", released, max lag ms, next deadline}
local b = redis.call("HMGET", KEYS[1], "seq", "epoch", "generation", "paused", "validated")
if not b[3] then
  -- No books: this server may have come back empty (its products not restored yet).
  if ARGV[8] == "1" and redis.call("GET", KEYS[8]) ~= ARGV[3] then
    return {"unvalidated"}
  end
  return {"unknown"}
end
if b[4] then
  return {"paused", b[4]}
end
if b[5] ~= ARGV[3] then
  return {"unvalidated"}
end
local epoch, seq = tonumber(b[2]), tonumber(b[1])
local seen_epoch, seen_seq = tonumber(ARGV[4]), tonumber(ARGV[5])
if epoch < seen_epoch or (epoch == seen_epoch and seq < seen_seq) then
  local reason = "rollback: books at " .. epoch .. "/" .. seq ..
    " but take " .. seen_epoch .. "/" .. seen_seq .. " was already answered"
  redis.call("HSET", KEYS[1], "paused", reason)
  return {"paused", reason}
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function words(s)
  local out = {}
  for w in string.gmatch(s, "%S+") do
    out[#out + 1] = w
  end
  return out
end

-- What the settles change in the books, written once (an expiry batch settles many).
local held, given = 0, 0
local function flush()
  redis.call("HINCRBY", KEYS[1], "held", -held)
  if given > 0 then
    redis.call("HINCRBY", KEYS[1], "quantity", given)
    redis.call("HINCRBY", KEYS[1], "sold", -given)
    redis.call("HINCRBY", KEYS[1], "released", given)
  end
  redis.call("HSET", KEYS[1], "seq", seq)
end

-- The hold `id` (its record `raw`) becomes `state`: one change, enqueued (the books'
-- counters wait for flush()).
local function settle(id, raw, state)
  local h = words(raw) -- quantity, expires, user, take epoch, take seq, [key]
  local qty, expires, user, key = tonumber(h[1]), h[2], h[3], h[6] or ""
  redis.call("HDEL", KEYS[2], id)
  redis.call("ZREM", KEYS[3], id)
  held = held + qty
  if state ~= "confirmed" then
    given = given + qty
    redis.call("HINCRBY", KEYS[5], user, -qty)
    if key ~= "" then
      local idem = ARGV[7] .. #user .. ":" .. user .. ":" .. key
      if redis.call("HGET", idem, "order_id") == id then
        redis.call("DEL", idem)
      end
    end
  end
  local at = words(redis.call("HGET", KEYS[4], id) or "")[3] or "0"
  redis.call("HSET", KEYS[4], id, user .. " " .. qty .. " " .. at .. " " .. state .. " " .. expires)
  seq = seq + 1
  redis.call("XADD", KEYS[6], "*",
    "kind", "change", "order_id", id, "product_id", ARGV[6], "generation", b[3],
    "user_id", user, "quantity", qty, "ordered_at", at, "epoch", h[4], "seq", h[5],
    "idem", key, "state", state, "expires_at", expires, "change_epoch", epoch,
    "change_seq", seq, "settled_at", now)
  return {state, epoch, seq}
end

if ARGV[1] == "expire" then
  local due = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, tonumber(ARGV[2]))
  local lag = 0
  for _, id in ipairs(due) do
    local raw = redis.call("HGET", KEYS[2], id)
    if raw then
      lag = math.max(lag, now - tonumber(words(raw)[2]))
      settle(id, raw, "expired")
    else
      redis.call("ZREM", KEYS[3], id)
    end
  end
  if #due > 0 then
    flush()
  end
  local next_due = redis.call("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
  return {"expired_batch", #due, lag, next_due[2] or ""}
end

local id = ARGV[2]
local raw = redis.call("HGET", KEYS[2], id)
if raw then
  local state = ARGV[1] == "confirm" and "confirmed" or "cancelled"
  if now >= tonumber(words(raw)[2]) then
    state = "expired"
  end
  local settled = settle(id, raw, state)
  flush()
  return settled
end
-- Settled before (or never a hold): answer what it became. A write first, so the
-- durability wait after this script covers the change it names.
local record = redis.call("HGET", KEYS[4], id)
if not record then
  return {"unknown"}
end
local state = words(record)[4]
if not state then
  return {"not_reserved"}
end
if state == "reserved" then
  -- Reserved, yet not among the holds: a settle stopped part-way (an error after its
  -- first writes; Redis keeps them). Its unit would stay held for good and no answer
  -- would be true: selling pauses until a repair rebuilds the holds from the database.
  local reason = "broken: hold " .. id .. " was left half-settled" -- hotdeal.fence.BROKEN
  redis.call("HSET", KEYS[1], "paused", reason)
  return {"paused", reason}
end
redis.call("SET", KEYS[7], "1")
return {state, "0", "0"}
