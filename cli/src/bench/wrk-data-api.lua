-- The wrk script of `shardcache bench` (cli/src/bench/load_generators.rs writes it
-- next to the run's other files and passes the arguments):
--
--   wrk ... -s wrk-data-api.lua URL -- MODE KEYS VALUE_LEN
--
--   MODE get:  GET /data/<key> of a random one of KEYS preloaded keys
--   MODE post: POST /data {"key": <random key>, "value": <that key's value>}
--
-- Keys and values are those of cli/src/bench/support.rs: key i is "k" and 15
-- digits; letter j of its value is 'a' + (i + j) mod 26. So a POST rewrites a key
-- with the bytes it already had, and a later GET can still check them. Every
-- request is formatted once, in init(); request() only picks one at random, so the
-- script costs wrk as little as it can.
--
-- done() prints one machine-readable line, `shardcache-wrk name=value ...`: counts,
-- the run's duration and latency percentiles in microseconds. wrk counts a response
-- with a status of 400 or more in errors.status.

local prepared = {}
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_number", threads)
end

local function key(index)
   return string.format("k%015d", index)
end

local alphabet = "abcdefghijklmnopqrstuvwxyz"

local function value(index, length)
   local shift = index % 26
   local rotated = alphabet:sub(shift + 1) .. alphabet:sub(1, shift)
   return string.rep(rotated, math.ceil(length / 26)):sub(1, length)
end

function init(args)
   local mode, keys, value_len = args[1], tonumber(args[2]), tonumber(args[3])
   if keys == nil or keys < 1 or value_len == nil then
      error("usage: -- get|post KEYS VALUE_LEN")
   end
   for index = 0, keys - 1 do
      if mode == "get" then
         prepared[index + 1] = wrk.format("GET", "/data/" .. key(index))
      elseif mode == "post" then
         local body = '{"key":"' .. key(index) .. '","value":"' .. value(index, value_len) .. '"}'
         prepared[index + 1] = wrk.format("POST", "/data", { ["Content-Type"] = "application/json" }, body)
      else
         error("MODE must be get or post, not " .. tostring(mode))
      end
   end
   math.randomseed(os.time() * 1000 + (thread_number or 0))
end

function request()
   return prepared[math.random(#prepared)]
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      "shardcache-wrk requests=%d duration_us=%d bytes=%d connect_errors=%d read_errors=%d "
         .. "write_errors=%d status_errors=%d timeout_errors=%d p50_us=%d p99_us=%d "
         .. "p999_us=%d mean_us=%.1f max_us=%d\n",
      summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
      errors.write, errors.status, errors.timeout, latency:percentile(50),
      latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
