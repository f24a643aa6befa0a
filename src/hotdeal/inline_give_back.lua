#!lua flags=allow-oom
-- Inline mode: undo a take whose RDBMS insert is known not to have committed, so a
-- failed request sells nothing. The sequence number stays used (the fence only ever
-- moves forward). At most once per take (hotdeal.inline): only a take whose record is
-- still in the inline hash puts its units back; books rebuilt since (a reset or repair
-- deleted every record) never counted it, and only its traces go.
-- allow-oom: it settles a take already made (a full Redis must not strand it).
-- KEYS: 1 books, 2 buyers, 3 buyer-orders, 4 orders, 5 idempotency key (or placeholder),
--       6 the inline takes (hash)
-- ARGV: 1 quantity, 2 user id, 3 order id, 4 "1" if KEYS[5] is a real key
local qty = tonumber(ARGV[1])
if redis.call("HDEL", KEYS[6], ARGV[3]) == 1 then
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
