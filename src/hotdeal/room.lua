-- The waiting room of one product (hotdeal.room): a place in line per buyer, the
-- admission frontier, and the operator's settings, each request in one atomic step.
--
-- A place's score orders the line: a random one below FIRST_COME for who joins before
-- the opening in "random" mode (the line is drawn at random, as Cloudflare and Queue-it
-- do), FIRST_COME + the millisecond of arrival (x 1000, + the order Redis ran the joins
-- of one millisecond in) otherwise: when the front read the join if the service was
-- given it (within a minute of Redis's clock), else Redis's own time. Under overload the joins wait in the front and the workers' backlog, and
-- are run in another order than they came (15.7% of pairs at 2,000 joins a second).
-- Nobody is admitted before the opening, so the drawn part of the line is complete when
-- admission starts.
--
-- The frontier counts places admitted (the first `frontier` of the line). It grows at
-- the room's rate for the time the sale was open with stock, brought up to date by
-- whichever request comes first 100 ms or more after the last (a write at most ten times
-- a second per product, whatever the load), and never past the line's end (a crowd that
-- joins later is not let in at once). While sold out it stands still: units that come
-- back admit the next in line at the rate. A change of rate applies from that moment.
--
-- Each room has an id, new whenever the room is switched on: tickets and passes carry
-- it, so those of a room switched off (or of an earlier event) open nothing.
--
-- An automatic rate (field `auto`: a target in ms, 0 = the operator's rate) follows what
-- the order service is measured to serve: the take script counts the room's sales
-- (`served`) and those that waited in the service longer than the target (`slow`). Each
-- second, with the first request after it: more than 5% slow (and at least 3) cuts the
-- rate by 30%, never below 1 a second; a few slow ones hold it; none (or under 5%) grow
-- it by 25% (a doubling in ~3 s) while the line is longer than those admitted and the
-- sale is open, up to AUTO_MAX. A rate of 0 (the doors shut) stays 0.
--
-- KEYS: 1 room (hash), 2 line (sorted set), 3 books, 4 admitted (hash buyer -> ms)
-- ARGV: 1 "join" | "poll" | "configure"
--   join, poll: 2 buyer, 3 a random score below FIRST_COME (join), 4 the ticket's room
--               id (poll) or when the front read the join, in microseconds ("" unknown)
--   configure:  2 mode, 3 rate, 4 pass ttl s, 6 auto target ms ("" each: unchanged; a
--               rate alone ends the automatic one), 5 a new room id
-- Returns:
--   {"unknown"}                            no books: not a product (or Redis came back empty)
--   {"closed"}                             no room for this event (order directly)
--   {"sold_out"}                           nothing left to sell, and nothing held
--   {"no_place"}                           poll: no place in this room (another room's ticket)
--   {"place", rank, admitted, rate, opens_at_ms, now_ms, room id, first_admission,
--    pass_ttl_s, stalled}   admitted: the whole places admitted; stalled: "" while
--    admission can move, "paused" (selling is paused) or "held" (every unit left is
--    held for payment)
--   configure: {"configured", room id} or {"refused", why}
local FIRST_COME = 1099511627776 -- 2^40
local AUTO_MIN_SLOW, AUTO_SLOW_SHARE, AUTO_CUT, AUTO_GROW = 3, 0.05, 0.7, 1.25
local AUTO_MIN, AUTO_MAX = 1, 100000
local function number(raw, default)
  local n = tonumber(raw or "")
  if n == nil or n ~= n or n < 0 or n == math.huge then -- absent, nan, negative, inf
    return default
  end
  return n
end

local room = redis.call("HMGET", KEYS[1], "generation", "mode", "rate", "frontier", "at",
  "pass_ttl", "id", "auto", "auto_at", "served", "slow")
local b = redis.call("HMGET", KEYS[3], "generation", "quantity", "opens_at", "paused", "held")
if not b[1] then
  return {"unknown"}
end
local t = redis.call("TIME")
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local on = room[1] and room[1] == b[1]
local stock = number(b[2], 0)
local opens = number(b[3], 0)
local rate = number(room[3], 0)
local frontier = number(room[4], 0)
-- A last update that is no time, or later than now (a hand edit; a failover to a server
-- whose clock is behind), would hold the frontier until then: it is now.
local at = number(room[5], -1)
local at_unknown = at < 0 or at > now
if at_unknown then
  at = now
end
local selling = stock > 0 and not b[4]

-- Each second, the automatic rate for the next (see above).
local function steer(places)
  local target = number(room[8], 0)
  local since = number(room[9], 0)
  -- (A start later than now, like `at` above, is no start: steer now.)
  if target <= 0 or (now - since < 1000 and since <= now) then
    return
  end
  local served, slow = number(room[10], 0), number(room[11], 0)
  local late = slow > served * AUTO_SLOW_SHARE
  if late and slow >= AUTO_MIN_SLOW then
    rate = math.max(rate * AUTO_CUT, math.min(rate, AUTO_MIN)) -- a cut never raises it
  elseif not late and selling and now >= opens and places > frontier then
    rate = math.min(math.max(rate, AUTO_MAX), rate * AUTO_GROW) -- nor a growth lowers it
  end
  redis.call("HSET", KEYS[1], "rate", string.format("%.17g", rate), "auto_at", now,
    "served", 0, "slow", 0)
end

-- Bring the frontier up to date (`force`: now, whatever the last update).
local function advance(force)
  if not force and now - at < 100 then
    return
  end
  local places = redis.call("ZCARD", KEYS[2])
  if selling and now >= opens then
    local from = math.max(at, opens)
    if now > from then
      frontier = math.min(frontier + rate * (now - from) / 1000, places)
    end
  end
  -- %.17g: the stored frontier is the one this script compared ranks with.
  redis.call("HSET", KEYS[1], "frontier", string.format("%.17g", frontier), "at", now)
  steer(places)
end

if ARGV[1] == "configure" then
  if not on then
    redis.call("DEL", KEYS[1], KEYS[2], KEYS[4])
    redis.call("HSET", KEYS[1], "generation", b[1], "mode", "fifo", "rate", 100,
      "pass_ttl", 120, "frontier", 0, "at", now, "arrivals", 0, "id", ARGV[5], "auto", 0)
    room[7] = ARGV[5]
    room[8] = nil
  else
    -- Places already given were scored for the mode they were given in: a line drawn
    -- at random after some came first would put those behind every draw.
    if ARGV[2] ~= "" and ARGV[2] ~= room[2] and redis.call("ZCARD", KEYS[2]) > 0 then
      return {"refused", "the mode can't change once the line has places"}
    end
    advance(true) -- what the old rate admitted until now stays admitted
  end
  for i, field in ipairs({"mode", "rate", "pass_ttl"}) do
    if ARGV[i + 1] ~= "" then
      redis.call("HSET", KEYS[1], field, ARGV[i + 1])
    end
  end
  if ARGV[6] ~= "" or ARGV[3] ~= "" then
    -- An automatic rate starts from the current one, with a fresh count.
    redis.call("HSET", KEYS[1], "auto", ARGV[6] ~= "" and ARGV[6] or 0, "auto_at", now,
      "served", 0, "slow", 0)
  end
  return {"configured", room[7]}
end

if not on then
  return {"closed"}
end
if ARGV[1] == "poll" and ARGV[4] ~= room[7] then
  return {"no_place"} -- another room's ticket, sold out or not
end
advance(at_unknown)
-- Units held for payment are not lost yet: while any are, the line keeps its places
-- and stands still (a release reopens the sale, and admission goes on).
if stock <= 0 and number(b[5], 0) <= 0 then
  return {"sold_out"}
end
local stalled = ""
if b[4] then
  stalled = "paused"
elseif stock <= 0 then
  stalled = "held"
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
    local arrived = tonumber(ARGV[4]) or now_us
    if math.abs(arrived - now_us) > 60000000 then
      arrived = now_us -- a front whose clock is off: Redis's own time
    end
    -- nginx reads its clock once per event-loop pass, so joins read in one pass share
    -- a millisecond: within it, the order Redis ran them in.
    local within = redis.call("HINCRBY", KEYS[1], "arrivals", 1) % 1000
    score = FIRST_COME + math.floor(arrived / 1000) * 1000 + within
  end
  redis.call("ZADD", KEYS[2], score, buyer)
  rank = redis.call("ZRANK", KEYS[2], buyer)
end
-- Never past the line (a hand-edited frontier of 1e19 would not fit Redis's integer).
local admitted = math.floor(math.min(frontier, redis.call("ZCARD", KEYS[2])))
local first = 0
if rank < admitted then
  first = redis.call("HSETNX", KEYS[4], buyer, now)
end
return {"place", rank, admitted, tostring(rate), opens, now, room[7], first,
  number(room[6], 120), stalled}
