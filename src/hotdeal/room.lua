-- The waiting room of one product (hotdeal.room): a place in line per buyer, and the
-- admission frontier, in one round trip per join or poll.
--
-- A place's score orders the line: a random one below FIRST_COME for who joins before
-- the opening in "random" mode (the line is drawn at random, as Cloudflare and Queue-it
-- do), FIRST_COME + an arrival number otherwise. Nobody is admitted before the opening,
-- so the drawn part of the line is complete when admission starts.
--
-- The frontier counts places admitted (the first `frontier` of the line). It grows at
-- the room's rate while there is stock to sell and the sale is open, by whichever join
-- or poll comes first after 100 ms (a write at most ten times a second per product,
-- whatever the load), by at most one second's worth at a time (nobody polling means
-- nobody is waiting: no burst afterwards), and never past the line's end (a burst of
-- newcomers is not let in at once). While sold out it stands still: units that come
-- back admit the next in line at the rate.
--
-- KEYS: 1 room (hash), 2 line (sorted set), 3 books, 4 admitted (hash buyer -> ms)
-- ARGV: 1 "join" | "poll", 2 buyer, 3 a random score below FIRST_COME (join)
-- Returns:
--   {"closed"}                             no room for this event (order directly)
--   {"sold_out"}                           nothing left to sell
--   {"no_place"}                           poll: this buyer has no place in this line
--   {"unknown"}                            no books: not a product (or Redis came back empty)
--   {"place", rank, frontier, rate, opens_at_ms, now_ms, generation, first_admission,
--    pass_ttl_s}
local FIRST_COME = 1099511627776 -- 2^40
local room = redis.call("HMGET", KEYS[1], "generation", "mode", "rate", "frontier", "at",
  "pass_ttl")
local b = redis.call("HMGET", KEYS[3], "generation", "quantity", "opens_at", "paused")
if not b[1] then
  return {"unknown"}
end
if not room[1] or room[1] ~= b[1] then
  return {"closed"}
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stock = tonumber(b[2] or "0")
local opens = tonumber(b[3] or "0")
local rate = tonumber(room[3] or "0")
local frontier = tonumber(room[4] or "0")
local at = tonumber(room[5] or "0")

if now - at >= 100 then
  if stock > 0 and not b[4] and now >= opens then
    local from = math.max(at, opens)
    local grown = frontier + rate * math.min(now - from, 1000) / 1000
    frontier = math.min(grown, redis.call("ZCARD", KEYS[2]))
  end
  redis.call("HSET", KEYS[1], "frontier", tostring(frontier), "at", now)
end
if stock <= 0 then
  return {"sold_out"}
end

local buyer = ARGV[2]
local rank = redis.call("ZRANK", KEYS[2], buyer)
if not rank then
  if ARGV[1] ~= "join" then
    return {"no_place"}
  end
  local score
  if room[2] == "random" and now < opens then
    score = ARGV[3]
  else
    score = FIRST_COME + redis.call("HINCRBY", KEYS[1], "arrivals", 1)
  end
  redis.call("ZADD", KEYS[2], score, buyer)
  rank = redis.call("ZRANK", KEYS[2], buyer)
end
local first = 0
if rank < math.floor(frontier) then
  first = redis.call("HSETNX", KEYS[4], buyer, now)
end
return {"place", rank, tostring(frontier), tostring(rate), opens, now, room[1], first,
  room[6] or "120"}
