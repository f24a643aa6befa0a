#!lua flags=allow-oom
-- Inline mode: undo a take whose RDBMS insert failed, so a failed request sells nothing.
-- The sequence number stays used (the fence only ever moves forward).
-- allow-oom: it settles a take already made (a full Redis must not strand it).
-- Books rebuilt since the take (a reset or repair, at a later epoch) never counted it:
-- the stock is not put back twice, only the take's traces go.
-- KEYS: 1 books, 2 buyers, 3 buyer-orders, 4 orders, 5 idempotency key (or placeholder)
-- ARGV: 1 quantity, 2 user id, 3 order id, 4 "1" if KEYS[5] is a real key, 5 the take's
--       epoch
local qty = tonumber(ARGV[1])
if tonumber(ARGV[5]) >= tonumber(redis.call("HGET", KEYS[1], "rebuilt") or "0") then
  redis.call("HINCRBY", KEYS[1], "quantity", qty)
  redis.call("HINCRBY", KEYS[1], "sold", -qty)
  redis.call("HINCRBY", KEYS[1], "inline_pending", -qty)
  redis.call("HINCRBY", KEYS[2], ARGV[2], -qty)
end
local listed = redis.call("HGET", KEYS[3], ARGV[2])
if listed then
  local kept = {}
  for id in string.gmatch(listed, "%S+") do
    if id ~= ARGV[3] then
      kept[#kept + 1] = id
    end
  end
  if #kept > 0 then
    redis.call("HSET", KEYS[3], ARGV[2], table.concat(kept, " "))
  else
    redis.call("HDEL", KEYS[3], ARGV[2])
  end
end
redis.call("HDEL", KEYS[4], ARGV[3])
if ARGV[4] == "1" then
  redis.call("DEL", KEYS[5])
end
return 1
