#!lua flags=allow-oom
-- The writer stored these orders: acknowledge and delete them (persisted entries leave
-- the stream, so its length is the backlog), and read the books in the same atomic
-- step for the fence's check. A script, not MULTI: under maxmemory a full Redis refuses
-- every command queued in a MULTI, and then nothing could ever be acknowledged.
-- KEYS: 1 stream, 2 books. ARGV: the group, then the entry ids.
redis.call("XACK", KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call("XDEL", KEYS[1], unpack(ARGV, 2))
return redis.call("HGETALL", KEYS[2])
