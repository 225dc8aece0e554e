-- wrk script of tools/loadgen/wrk.py: a rotating header read from a file, and the run's figures
-- as one machine-readable line.
--
-- Options come from the environment, not from script arguments, because wrk hands the script
-- its URL and options mixed together and getopt's reordering makes their positions unreliable:
--
--   FLUXGATE_WRK_HEADER_FILE   one header value per line (blank lines skipped, spaces trimmed)
--   FLUXGATE_WRK_HEADER_NAME   the rotating header's name
--   FLUXGATE_WRK_START         index of the first value to send (default 0), so that a series of
--                              runs walks one long rotation instead of replaying its beginning
--   FLUXGATE_WRK_SPREAD        build at least this many distinct requests (see init())
--
-- Every distinct request is built once, in init(): request() then costs a table index, which
-- keeps the generator's per-request work as close to wrk's static path as Lua allows.
-- request() is only defined when a header file is given, so a run without one stays on wrk's
-- static path (wrk checks for it after init()).
--
-- init() runs in wrk's main thread before the load threads start; it writes "fluxgate-wrk-ready
-- <thread> <values> <distinct requests>" to stderr (unbuffered, unlike stdout on a pipe), so the
-- driver can continue the rotation where a run stopped and read the generator's CPU
-- after the file is loaded and count only the load's share. done() prints one line,
-- "fluxgate-wrk-json {...}", with the summary, latency percentiles in microseconds and, per
-- thread, the index of the next value to send.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

local function trim(s)
   return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

function init(args)
   local file = os.getenv("FLUXGATE_WRK_HEADER_FILE")
   local name = os.getenv("FLUXGATE_WRK_HEADER_NAME")
   local count = 0
   if file and file ~= "" then
      local headers = {}
      for k, v in pairs(wrk.headers) do
         headers[k] = v
      end
      local mark = "@@fluxgate-wrk-value@@"  -- a placeholder, split on below
      headers[name] = mark
      local template = wrk.format(nil, nil, headers)
      local at = template:find(mark, 1, true)
      local prefix, suffix = template:sub(1, at - 1), template:sub(at + #mark)
      local values = {}
      for line in io.lines(file) do
         local value = trim(line)
         if value ~= "" then
            count = count + 1
            values[count] = value
         end
      end
      if count == 0 then
         error("no header values in " .. file)
      end
      -- FLUXGATE_WRK_SPREAD = n: n distinct requests (or one per value if there are more),
      -- each with an "X-Loadgen-Seq: <6 digits>" header after the rotating one, the values
      -- taken in turn. Lua interns strings, so without it a file of few values makes few
      -- requests: the generator's memory then differs with the count of values, and on a
      -- machine whose last-level cache it shares with the proxy, so does the proxy's.
      local spread = tonumber(os.getenv("FLUXGATE_WRK_SPREAD") or "0") or 0
      nreqs = math.max(spread, count)
      reqs = {}
      for i = 1, nreqs do
         local seq = ""
         if spread > 0 then
            seq = "\r\nX-Loadgen-Seq: " .. string.format("%06d", i % 1000000)
         end
         reqs[i] = prefix .. values[(i - 1) % count + 1] .. seq .. suffix
      end
      values = nil
      -- thread k of t sends values start+k, start+k+t, ...: the threads together walk the list
      -- in order, as one generator would.
      local start = tonumber(os.getenv("FLUXGATE_WRK_START") or "0") or 0
      step = tonumber(os.getenv("FLUXGATE_WRK_THREADS") or "1") or 1
      sent = 0
      index = (start + id) % nreqs
      request = function()
         sent = sent + 1
         local r = reqs[index + 1]
         index = (index + step) % nreqs
         return r
      end
   end
   io.stderr:write(string.format("fluxgate-wrk-ready %d %d %d\n", id, count, nreqs or 0))
   io.stderr:flush()
end

function done(summary, latency, requests)
   local e = summary.errors
   local per_thread = {}
   for _, t in ipairs(threads) do
      table.insert(per_thread, string.format("{\"id\":%d,\"sent\":%d}", t:get("id"), t:get("sent") or 0))
   end
   local pct = {}
   for _, p in ipairs({ { "p50", 50 }, { "p90", 90 }, { "p99", 99 }, { "p99_9", 99.9 } }) do
      table.insert(pct, string.format("\"%s\":%d", p[1], latency:percentile(p[2])))
   end
   io.write(string.format(
      "fluxgate-wrk-json {\"duration_us\":%d,\"requests\":%d,\"bytes\":%d," ..
      "\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}," ..
      "\"latency_us\":{%s,\"min\":%d,\"max\":%d,\"mean\":%.3f,\"stdev\":%.3f},\"threads\":[%s]}\n",
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      table.concat(pct, ","), latency.min, latency.max, latency.mean, latency.stdev,
      table.concat(per_thread, ",")))
   io.stdout:flush()
end
