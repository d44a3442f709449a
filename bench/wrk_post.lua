-- wrk script for bench/ingest.py: POST pre-generated, pre-signed webhook bodies.
--
-- BENCH_BODIES=<prefix>: thread N (1-based) reads <prefix>.<N>, one request a
-- line: "<X-Hub-Signature-256 value>\t<raw JSON body>". Every request is
-- formatted once in init(), so request() only hands out the next string and
-- the generator stays cheap. Each thread has its own file, so no message id is
-- sent twice unless a thread runs out of lines ("wrapped" counts that).
-- done() prints one line "BENCH_JSON {...}" that bench/ingest.py parses.

local threads = {}
local counter = 1

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local prefix = os.getenv("BENCH_BODIES")
  reqs = {}
  for line in io.lines(prefix .. "." .. tid) do
    local tab = string.find(line, "\t", 1, true)
    local sig = string.sub(line, 1, tab - 1)
    local body = string.sub(line, tab + 1)
    reqs[#reqs + 1] = wrk.format("POST", wrk.path,
      {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sig}, body)
  end
  idx = 0
  sent = 0
  non200 = 0
  wrapped = 0
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx = 1
    wrapped = wrapped + 1
  end
  sent = sent + 1
  return reqs[idx]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local sent_total, non200_total, wrapped_total = 0, 0, 0
  for _, t in ipairs(threads) do
    sent_total = sent_total + t:get("sent")
    non200_total = non200_total + t:get("non200")
    wrapped_total = wrapped_total + t:get("wrapped")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"sent":%d,"non200":%d,"wrapped":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_p999_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, sent_total, non200_total, wrapped_total,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
