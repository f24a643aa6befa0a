#!lua flags=allow-oom
-- Inline mode: the order's row is committed; only now may its Idempotency-Key replay.
-- At most once per take (hotdeal.inline): the take's record in the product's inline
-- hash is what is settled; a second settle (a retry, the sweep, a replay) finds none.
-- A rebuild (reset, repair) deleted every record: it counted the row already.
-- allow-oom: it settles a take already made (a full Redis must not strand it).
-- KEYS: 1 books, 2 idempotency key (or placeholder), 3 the inline takes (hash)
-- ARGV: 1 quantity, 2 "1" if KEYS[2] is a real key, 3 order id
if redis.call("HDEL", KEYS[3], ARGV[3]) == 0 then
  return 0 -- settled already (done, or given back: then its key is gone too)
end
redis.call("HINCRBY", KEYS[1], "inline_pending", -tonumber(ARGV[1]))
if ARGV[2] == "1" and redis.call("HGET", KEYS[2], "order_id") == ARGV[3] then
  redis.call("HSET", KEYS[2], "state", "done")
end
return 1
