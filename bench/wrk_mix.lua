-- wrk script for bench/load.py: a weighted mix of requests, with per-kind and per-label counts and latencies.
--   wrk ... -s wrk_mix.lua URL -- <request file> <media type> <weights> [<Authorization header>]
-- The request file has one request a line, tab-separated: kind, label, method, path, body (may be empty).
-- Kinds are read, search and create; <weights> gives theirs as "read=60,search=30,create=10". Each request
-- first picks a kind by weight, then a random request of that kind.
-- Every request carries an X-Request-Id naming its label and a sequence number; the server echoes it, so
-- response() can tell which request a response answers (wrk does not say which connection it came on), and
-- time it with a monotonic clock taken where wrk starts its own latency clock (right before the write).
-- done() prints one line "BENCH_RESULT {json}" that bench/load.py parses.

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

-- per thread (each has its own Lua state): what it sends, and what it saw
local by_kind = {}       -- kind -> list of {head, tail, label index}
local kind_order = {}    -- kinds with a weight, in the order given
local cumulative = {}    -- running sums of the weights, parallel to kind_order
local total_weight = 0
local seq = 0
local started = {}       -- sequence number -> start time (us)
-- Read by done() through thread:get, which copies flat tables only (a nested one crashes wrk 4.1).
labels = {}              -- label index -> label
label_kind = {}          -- label index -> kind
sample_label = {}        -- one entry per timed response: its label index ...
sample_us = {}           -- ... and its latency in us (parallel to sample_label)
count = {}               -- label index -> responses
bad = {}                 -- label index -> non-2xx responses
unattributed = 0         -- responses without a known X-Request-Id
unattributed_bad = 0

local function split_tabs(line)
   local out, start = {}, 1
   while true do
      local tab = line:find("\t", start, true)
      if not tab then
         out[#out + 1] = line:sub(start)
         return out
      end
      out[#out + 1] = line:sub(start, tab - 1)
      start = tab + 1
   end
end

function init(args)
   local file, media, weights, auth = args[1], args[2], args[3], args[4]
   math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
   local label_index = {}
   for line in io.lines(file) do
      if #line > 0 then
         local f = split_tabs(line)
         local kind, label, method, path, body = f[1], f[2], f[3], f[4], f[5]
         if body == "" then body = nil end
         if not label_index[label] then
            labels[#labels + 1] = label
            label_index[label] = #labels
            label_kind[#labels] = kind
            count[#labels], bad[#labels] = 0, 0
         end
         local headers = { ["Accept"] = media }  -- a fresh table each time: wrk.format adds to it
         if auth and #auth > 0 then headers["Authorization"] = auth end
         if body then headers["Content-Type"] = media end
         local full = wrk.format(method, path, headers, body)
         local eol = full:find("\r\n", 1, true)
         by_kind[kind] = by_kind[kind] or {}
         local list = by_kind[kind]
         list[#list + 1] = { full:sub(1, eol + 1), full:sub(eol + 2), label_index[label] }
      end
   end
   for part in weights:gmatch("[^,]+") do
      local kind, w = part:match("^(%a+)=(%d+%.?%d*)$")
      assert(kind, "weights look like read=60,search=30,create=10, not " .. weights)
      w = tonumber(w)
      if w > 0 then
         assert(by_kind[kind] and #by_kind[kind] > 0, "no request of kind " .. kind .. " in " .. file)
         total_weight = total_weight + w
         kind_order[#kind_order + 1] = kind
         cumulative[#cumulative + 1] = total_weight
      end
   end
   assert(total_weight > 0, "every weight is zero")
end

function request()
   local r = math.random() * total_weight
   local kind = kind_order[#kind_order]
   for k = 1, #cumulative do
      if r < cumulative[k] then
         kind = kind_order[k]
         break
      end
   end
   local list = by_kind[kind]
   local req = list[math.random(#list)]
   seq = seq + 1
   started[seq] = now_us()
   return req[1] .. "X-Request-Id: bench-" .. req[3] .. "-" .. seq .. "\r\n" .. req[2]
end

function response(status, headers, body)
   local t = now_us()
   local id = headers["X-Request-Id"] or headers["x-request-id"] or headers["X-Request-ID"]
   local li, s
   if id then
      li, s = id:match("^bench%-(%d+)%-(%d+)$")
   end
   li, s = tonumber(li), tonumber(s)
   local failed = status < 200 or status > 299
   if li and s and started[s] and count[li] then
      local k = #sample_us + 1
      sample_label[k], sample_us[k] = li, t - started[s]
      started[s] = nil
      count[li] = count[li] + 1
      if failed then bad[li] = bad[li] + 1 end
   else
      unattributed = unattributed + 1
      if failed then unattributed_bad = unattributed_bad + 1 end
   end
end

local function percentile(sorted, p)
   if #sorted == 0 then return -1 end
   local k = math.floor(#sorted * p / 100) + 1
   if k > #sorted then k = #sorted end
   return sorted[k]
end

local function stats_json(list, n, errors)
   table.sort(list)
   return string.format('{"n":%d,"errors":%d,"p50_us":%.0f,"p95_us":%.0f,"p99_us":%.0f}',
      n, errors, percentile(list, 50), percentile(list, 95), percentile(list, 99))
end

function done(summary, latency, requests)
   -- merge what every thread saw, per label and per kind
   local per_label, per_kind, kinds_seen = {}, {}, {}
   local una, una_bad = 0, 0
   for _, thread in ipairs(threads) do
      local t_labels, t_kind = thread:get("labels"), thread:get("label_kind")
      local t_count, t_bad = thread:get("count"), thread:get("bad")
      local t_sample_label, t_sample_us = thread:get("sample_label"), thread:get("sample_us")
      local t_lat = {}  -- label index -> latencies, rebuilt here
      for i = 1, #t_labels do t_lat[i] = {} end
      for k = 1, #t_sample_us do
         local l = t_lat[t_sample_label[k]]
         l[#l + 1] = t_sample_us[k]
      end
      una = una + thread:get("unattributed")
      una_bad = una_bad + thread:get("unattributed_bad")
      for i, label in ipairs(t_labels) do
         local kind = t_kind[i]
         local L = per_label[label]
         if not L then
            L = { kind = kind, lat = {}, n = 0, errors = 0 }
            per_label[label] = L
         end
         local K = per_kind[kind]
         if not K then
            K = { lat = {}, n = 0, errors = 0 }
            per_kind[kind] = K
            kinds_seen[#kinds_seen + 1] = kind
         end
         for _, v in ipairs(t_lat[i]) do
            L.lat[#L.lat + 1] = v
            K.lat[#K.lat + 1] = v
         end
         L.n, L.errors = L.n + t_count[i], L.errors + t_bad[i]
         K.n, K.errors = K.n + t_count[i], K.errors + t_bad[i]
      end
   end
   local parts = {}
   for _, kind in ipairs(kinds_seen) do
      local K = per_kind[kind]
      parts[#parts + 1] = string.format('"%s":%s', kind, stats_json(K.lat, K.n, K.errors))
   end
   local lparts = {}
   for label, L in pairs(per_label) do
      lparts[#lparts + 1] = string.format('"%s":{"kind":"%s","stats":%s}', label, L.kind,
         stats_json(L.lat, L.n, L.errors))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
      '"p50_us":%d,"p95_us":%d,"p99_us":%d,"unattributed":%d,"unattributed_errors":%d,' ..
      '"kinds":{%s},"labels":{%s}}\n',
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), una, una_bad,
      table.concat(parts, ","), table.concat(lparts, ",")))
end
