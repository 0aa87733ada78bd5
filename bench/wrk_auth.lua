-- wrk script for bench/auth.py: reads with bearer tokens, and POSTs of pre-built bodies.
--   read: wrk ... -s wrk_auth.lua URL -- read <path prefix> <ids file> <tokens file> <accept> <once>
--   post: wrk ... -s wrk_auth.lua URL -- post <path> <bodies file> <content type> <accept> <once> <status> <text>
-- read: every request reads an id of the ids file with "Authorization: Bearer <token>". With once=0 the
--   tokens file holds one token, sent with every request (the ids cycle); with once=1 request k carries the
--   k-th token of the file (a token no server worker has seen before) and id k (ids cycling).
-- post: the k-th request POSTs line k of the bodies file; with once=0 the lines cycle.
-- With once=1 no line is sent twice (a client assertion's jti is accepted once): when the lines run out,
-- the connections get GET /healthz fillers until every request sent has been answered, then the thread
-- stops. Fillers (answers {"status":"ok"}) are never counted; the rate is then taken over the time from
-- the first request to the last counted response.
-- A counted response is good when its status is <status> (read: 200) and, unless <text> is empty, its body
-- contains <text> (read: "resourceType"). wrk runs with one thread (-t 1).
-- done() prints one line "BENCH_RESULT {json}" that bench/auth.py parses.

local ffi = require("ffi")
pcall(ffi.cdef, [[
   typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
   int clock_gettime(int clk_id, bench_timespec *tp);
]])
local ts = ffi.new("bench_timespec")
local function now_us()
   ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

local list = {}
local once = false
local filler = nil
local expect_status = 200
local expect_text = ""
local idx = 0
local primed = false

-- globals: done() reads them through thread:get
sent = 0        -- requests of the list sent (fillers not included)
counted = 0     -- responses to them
good = 0
bad = 0
fillers = 0
exhausted = 0   -- 1 when once=1 and the list ran out
first_us = 0
last_us = 0

local function lines(file)
   local out = {}
   for line in io.lines(file) do
      if #line > 0 then
         out[#out + 1] = line
      end
   end
   assert(#out > 0, "nothing in " .. file)
   return out
end

function init(args)
   local mode = args[1]
   if mode == "read" then
      local prefix, ids, tokens, accept = args[2], lines(args[3]), lines(args[4]), args[5]
      once = args[6] == "1"
      if once then
         for k, token in ipairs(tokens) do
            local headers = { ["Accept"] = accept, ["Authorization"] = "Bearer " .. token }
            list[k] = wrk.format("GET", prefix .. ids[(k - 1) % #ids + 1], headers)
         end
      else
         assert(#tokens == 1, "read with once=0 takes one token")
         for k, id in ipairs(ids) do
            local headers = { ["Accept"] = accept, ["Authorization"] = "Bearer " .. tokens[1] }
            list[k] = wrk.format("GET", prefix .. id, headers)
         end
         idx = math.random(0, #list - 1)  -- runs need not start on the same id
      end
      expect_text = '"resourceType"'
   elseif mode == "post" then
      local path, bodies, ctype, accept = args[2], lines(args[3]), args[4], args[5]
      once = args[6] == "1"
      expect_status = tonumber(args[7]) or 200
      expect_text = args[8] or ""
      for k, body in ipairs(bodies) do
         local headers = { ["Content-Type"] = ctype, ["Accept"] = accept }
         list[k] = wrk.format("POST", path, headers, body)
      end
   else
      error("mode must be read or post, not " .. tostring(mode))
   end
   filler = wrk.format("GET", "/healthz", { ["Accept"] = "application/json" })
end

function request()
   if not primed then
      -- wrk calls request() once before the run, only to check what it returns (script_verify_request):
      -- that call must not use up a line. Should a wrk not make it, this filler is sent and not counted.
      primed = true
      return filler
   end
   if first_us == 0 then
      first_us = now_us()
   end
   if once then
      if idx >= #list then
         exhausted = 1
         return filler
      end
      idx = idx + 1
   else
      idx = idx % #list + 1
   end
   sent = sent + 1
   return list[idx]
end

function response(status, headers, body)
   if status == 200 and body and body:match('^{"status": ?"ok"}%s*$') then
      fillers = fillers + 1
   else
      counted = counted + 1
      last_us = now_us()
      if status == expect_status and (expect_text == "" or (body and body:find(expect_text, 1, true))) then
         good = good + 1
      else
         bad = bad + 1
      end
   end
   if exhausted == 1 and counted >= sent then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local t = threads[1]
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
      '"p50_us":%d,"p99_us":%d,"sent":%d,"counted":%d,"good":%d,"bad":%d,"fillers":%d,' ..
      '"exhausted":%d,"first_us":%.0f,"last_us":%.0f}\n',
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(99), t:get("sent"), t:get("counted"), t:get("good"),
      t:get("bad"), t:get("fillers"), t:get("exhausted"), t:get("first_us"), t:get("last_us")))
end
