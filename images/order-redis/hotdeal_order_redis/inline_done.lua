#!lua flags=allow-oom
-- Inline mode: the order's row is committed; only now may its Idempotency-Key replay.
-- allow-oom: it settles a take already made (a full Redis must not strand it).
-- KEYS: 1 books, 2 idempotency key (or placeholder). ARGV: 1 quantity, 2 "1" if KEYS[2]
-- is a real key, 3 order id, 4 the take's epoch (books rebuilt since counted the row).
if tonumber(ARGV[4]) >= tonumber(redis.call("HGET", KEYS[1], "rebuilt") or "0") then
  redis.call("HINCRBY", KEYS[1], "inline_pending", -tonumber(ARGV[1]))
end
if ARGV[2] == "1" and redis.call("HGET", KEYS[2], "order_id") == ARGV[3] then
  redis.call("HSET", KEYS[2], "state", "done")
end
return 1
