-- wrk script for bench/crud.py. Every request is built once in init(), as wrk's docs advise.
--   read:   wrk ... -s wrk_load.lua URL -- read   <path prefix> <file of ids, one a line> <media type>
--   create: wrk ... -s wrk_load.lua URL -- create <path>        <file holding the body>   <media type>
--   an optional last argument is sent as the Authorization header
-- done() prints one line "BENCH_RESULT {json}" that bench/crud.py parses.

local requests_list = {}
local i = 0

function init(args)
   local mode, path, file, media, auth = args[1], args[2], args[3], args[4], args[5]
   local headers = { ["Accept"] = media }
   if auth and #auth > 0 then
      headers["Authorization"] = auth
   end
   if mode == "read" then
      for line in io.lines(file) do
         if #line > 0 then
            requests_list[#requests_list + 1] = wrk.format("GET", path .. line, headers)
         end
      end
      i = math.random(0, #requests_list - 1)  -- threads need not start on the same id
   elseif mode == "create" then
      local f = assert(io.open(file, "rb"))
      local body = f:read("*a")
      f:close()
      headers["Content-Type"] = media
      requests_list[1] = wrk.format("POST", path, headers, body)
   else
      error("mode must be read or create, not " .. tostring(mode))
   end
   assert(#requests_list > 0, "nothing to request")
end

function request()
   i = i % #requests_list + 1
   return requests_list[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
      '"p50_us":%d,"p99_us":%d}\n',
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
