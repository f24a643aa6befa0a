#!lua flags=allow-oom
-- A buyer's lookup (GET /v1/orders/{id}, GET /v1/orders?user_id): read the order index,
-- then write a mark, so the durability wait sent after this script covers the takes
-- read (the log is sequential): "yours" only once the take is durable. Books not
-- checked on this server (restarted, restored, promoted) answer nothing yet.
-- allow-oom: the mark overwrites one small key, so a full Redis still answers lookups.
--
-- KEYS: 1 books, 2 orders, 3 buyer-orders, 4 the product's sync mark, 5 the instance
--       mark (or a placeholder, ARGV[4] "0")
-- ARGV: 1 run_id of this connection's server, 2 "order" | "user", 3 order id | user id,
--       4 "1" if KEYS[5] is real
-- Returns {"unvalidated"} | {"unknown"} (no books) | {"ok", record} (order) |
--         {"ok", id1, record1, id2, record2, ...} (user)
local validated = redis.call("HGET", KEYS[1], "validated")
if not validated then
  if redis.call("EXISTS", KEYS[1]) == 0 then
    if ARGV[4] == "1" and redis.call("GET", KEYS[5]) ~= ARGV[1] then
      return {"unvalidated"}
    end
    return {"unknown"}
  end
end
if validated ~= ARGV[1] then
  return {"unvalidated"}
end
redis.call("SET", KEYS[4], ARGV[1])
if ARGV[2] == "order" then
  return {"ok", redis.call("HGET", KEYS[2], ARGV[3])}
end
local listed = redis.call("HGET", KEYS[3], ARGV[3])
local found = {"ok"}
if listed then
  for id in string.gmatch(listed, "%S+") do
    local record = redis.call("HGET", KEYS[2], id)
    if record then
      found[#found + 1] = id
      found[#found + 1] = record
    end
  end
end
return found
