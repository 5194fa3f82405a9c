-- The wrk driver of fastapi-dbpool: `dbpool bench --wrk`, the load tests and the benchmark.
--
--   wrk -t1 -c16 -d5s -s wrk.lua URL -- [key=value ...]
--
-- The request, by script argument:
--   mode=fixed (default)  the URL's path and query, with method=GET, body=<text> and
--                         header=Name: value (repeatable); a body gets a JSON content type
--                         unless a Content-Type header is given
--   mode=get_user         GET /users/<random id in 1..max_id>
--   mode=get_user_sync    GET /users/<random id in 1..max_id>/sync (users_api's def endpoint)
--   mode=list_items       GET /items?owner_id=<random id in 1..max_id>
--   mode=post_user        POST /users, a unique email per request
--   mode=process_item     POST /items/<id>/process, ids in turn from first_id, wrapping at max_id
-- max_id defaults to 10000, first_id to 1.
--
-- Every thread counts its responses by status (wrk itself only counts those >= 400);
-- done() prints one line, latencies in microseconds:
--   DBPOOL_WRK {"requests": N, "duration_us": N, "latency_us": {"p50": N, ...},
--               "errors": {"connect": N, ..., "status": N}, "statuses": {"200": N, ...}}
-- fastapi_dbpool.cli.wrk runs it and parses that line.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local mode, max_id, next_id, tag, fixed

local function fail(message)
   error("wrk.lua: " .. message)
end

local function parse(args)
   local options = { mode = "fixed", method = "GET", max_id = "10000", first_id = "1" }
   local headers = {}
   for _, arg in ipairs(args) do
      local key, value = string.match(arg, "^([%w_]+)=(.*)$")
      if key == nil then
         fail("argument '" .. arg .. "' is not key=value")
      end
      if key == "header" then
         local name, text = string.match(value, "^([^:]+):%s*(.*)$")
         if name == nil then
            fail("header '" .. value .. "' is not 'Name: value'")
         end
         headers[name] = text
      else
         options[key] = value
      end
   end
   return options, headers
end

local function has_header(headers, wanted)
   for name, _ in pairs(headers) do
      if string.lower(name) == string.lower(wanted) then
         return true
      end
   end
   return false
end

function init(args)
   statuses = {} -- a global: done() reads it from every thread with thread:get
   local options, headers = parse(args)
   mode = options.mode
   max_id = tonumber(options.max_id) or fail("max_id is not a number")
   next_id = tonumber(options.first_id) or fail("first_id is not a number")
   if mode == "fixed" then
      local body = options.body
      if body == "" then
         body = nil
      end
      if body and not has_header(headers, "Content-Type") then
         headers["Content-Type"] = "application/json"
      end
      fixed = wrk.format(options.method, wrk.path, headers, body)
   elseif mode ~= "get_user" and mode ~= "get_user_sync" and mode ~= "list_items"
      and mode ~= "post_user" and mode ~= "process_item" then
      fail("unknown mode '" .. mode .. "'")
   end
   -- A per-thread, per-run tag keeps emails unique across threads and runs.
   local address = tonumber(string.match(tostring({}), "0x(%x+)") or "0", 16) or 0
   math.randomseed(os.time() + address % 1000003)
   tag = string.format("%x%x", os.time() % 1000000, math.random(0, 0xfffffff))
end

local json_headers = { ["Content-Type"] = "application/json" }

function request()
   if mode == "fixed" then
      return fixed
   elseif mode == "get_user" then
      return wrk.format("GET", "/users/" .. math.random(1, max_id))
   elseif mode == "get_user_sync" then
      return wrk.format("GET", "/users/" .. math.random(1, max_id) .. "/sync")
   elseif mode == "list_items" then
      return wrk.format("GET", "/items?owner_id=" .. math.random(1, max_id))
   elseif mode == "post_user" then
      next_id = next_id + 1
      local body = string.format(
         '{"name":"Bench User","email":"b%s.%d@bench.example"}', tag, next_id)
      return wrk.format("POST", "/users", json_headers, body)
   end
   -- process_item
   local id = next_id
   next_id = next_id + 1
   if next_id > max_id then
      next_id = 1
   end
   return wrk.format("POST", "/items/" .. id .. "/process")
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local counts = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + n
      end
   end
   local parts = {}
   for status, n in pairs(counts) do
      table.insert(parts, string.format('"%d": %d', status, n))
   end
   local e = summary.errors
   io.write(string.format(
      'DBPOOL_WRK {"requests": %d, "duration_us": %d, "latency_us": {"p50": %d, "p90": %d,'
      .. ' "p99": %d, "max": %d, "mean": %.1f}, "errors": {"connect": %d, "read": %d,'
      .. ' "write": %d, "timeout": %d, "status": %d}, "statuses": {%s}}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
      e.timeout, e.status, table.concat(parts, ", ")))
end
