#!lua flags=allow-oom
-- The fence's writes to Redis, each one atomic on the server it lands on. allow-oom: a
-- full Redis (maxmemory, noeviction) must still stop selling and take the checks'
-- marks; each of these writes a field or a small key.
--
-- KEYS: 1 the product's books, 2 the instance mark (or a placeholder in a cluster)
-- ARGV: 1 what to do:
--   "whoami"                     -> this server's run_id
--   "pause", reason [, generation, epoch]
--                                -> 1 if the books exist (the first reason is kept), else 0;
--                                   with generation and epoch: 0 unless the books are
--                                   still of those (the pause was judged on them)
--   "stamp", run_id, generation, epoch
--                                -> 1: the books (of that generation) are checked on this
--                                   server and sell from `epoch` on; 0 if it is not
--                                   `run_id` any more, the books are of another
--                                   generation or already past that epoch
--   "instance", run_id           -> 1: every product is checked on this server; 0 if it
--                                   is not `run_id` any more
local run_id = string.match(redis.call("INFO", "server"), "run_id:(%w+)")
local what = ARGV[1]
if what == "whoami" then
  return run_id
end
if what == "pause" then
  if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
  end
  -- A check reads the books, then the database, then pauses: a repair, reset or stamp
  -- in between (each moves the generation or the epoch) made books it never judged.
  if ARGV[3] then
    local b = redis.call("HMGET", KEYS[1], "generation", "epoch")
    if tonumber(b[1] or "0") ~= tonumber(ARGV[3]) or tonumber(b[2] or "0") ~= tonumber(ARGV[4]) then
      return 0
    end
  end
  redis.call("HSETNX", KEYS[1], "paused", ARGV[2])
  return 1
end
if ARGV[2] ~= run_id then
  return 0
end
if what == "stamp" then
  local b = redis.call("HMGET", KEYS[1], "generation", "epoch")
  if b[1] ~= ARGV[3] or tonumber(b[2] or "0") >= tonumber(ARGV[4]) then
    return 0
  end
  redis.call("HSET", KEYS[1], "validated", run_id, "epoch", ARGV[4])
  return 1
end
if what == "instance" then
  redis.call("SET", KEYS[2], run_id)
  return 1
end
return redis.error_reply("fence.lua: unknown request " .. tostring(what))
