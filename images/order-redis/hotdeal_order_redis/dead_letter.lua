#!lua flags=allow-oom
-- Set an order the database refuses aside for a human: copy it to the product's
-- dead-letter stream and take it off the order stream, atomically. allow-oom: a full
-- Redis must not wedge the writer on one entry (the entry moves, memory stays level).
-- Once only: a second writer that claimed the same entry finds it acknowledged already.
-- KEYS: 1 stream, 2 dead-letter stream. ARGV: 1 group, 2 entry id, then field, value...
if redis.call("XACK", KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call("XADD", KEYS[2], "*", unpack(ARGV, 3))
redis.call("XDEL", KEYS[1], ARGV[2])
return 1
