-- Requests for one benchmarked endpoint, chosen by the first script argument:
--   wrk ... -s requests.lua URL -- MODE MAX_ID FIRST_ID
-- get_user      GET /users/<random id in 1..MAX_ID>
-- list_items    GET /items?owner_id=<random id in 1..MAX_ID>
-- post_user     POST /users with a unique email per request
-- process_item  POST /items/<id>/process, ids in turn from FIRST_ID, wrapping at MAX_ID
-- done() prints one line "BENCH_JSON {...}" that the harness parses.

local mode, max_id, next_id = "get_user", 10000, 1
local tag = "0"
local json_headers = { ["Content-Type"] = "application/json" }

function init(args)
   mode = args[1] or mode
   max_id = tonumber(args[2] or max_id)
   next_id = tonumber(args[3] or 1)
   -- A per-thread, per-run tag keeps emails unique across threads and runs.
   local address = tonumber(string.match(tostring({}), "0x(%x+)") or "0", 16) or 0
   math.randomseed(os.time() + address % 1000003)
   tag = string.format("%x%x", os.time() % 1000000, math.random(0, 0xfffffff))
end

function request()
   if mode == "get_user" then
      return wrk.format("GET", "/users/" .. math.random(1, max_id))
   elseif mode == "list_items" then
      return wrk.format("GET", "/items?owner_id=" .. math.random(1, max_id))
   elseif mode == "post_user" then
      next_id = next_id + 1
      local body = string.format(
         '{"name":"Bench User","email":"b%s.%d@bench.example"}', tag, next_id)
      return wrk.format("POST", "/users", json_headers, body)
   elseif mode == "process_item" then
      local id = next_id
      next_id = next_id + 1
      if next_id > max_id then next_id = 1 end
      return wrk.format("POST", "/items/" .. id .. "/process")
   end
   error("unknown mode " .. mode)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,' ..
      '"p99_us":%d,"max_us":%d,"mean_us":%.1f,"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
      e.status, e.timeout))
end
