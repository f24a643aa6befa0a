-- Undo a take whose inline RDBMS insert failed (inline mode only), so a failed
-- request sells nothing. KEYS: 1 quantity, 2 sold, 3 buyers, 4 idempotency key or "".
-- ARGV: 1 quantity, 2 user id.
local qty = tonumber(ARGV[1])
redis.call("INCRBY", KEYS[1], qty)
redis.call("DECRBY", KEYS[2], qty)
redis.call("HINCRBY", KEYS[3], ARGV[2], -qty)
if KEYS[4] ~= "" then
  redis.call("DEL", KEYS[4])
end
return 1
