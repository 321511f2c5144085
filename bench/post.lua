-- wrk script: POST the JSON body in the file named by BENCH_BODY, then print one JSON
-- line (prefixed BENCH_RESULT) with the counts and latency percentiles in microseconds.
-- With BENCH_TOKENS (a file of JWTs, one per line) and BENCH_THREADS (wrk's -t), each call
-- carries its own token: thread k of n takes lines k, k + n, k + 2n, ... and never shares one.
local path = os.getenv("BENCH_BODY")
local file = assert(io.open(path, "rb"), "cannot open BENCH_BODY")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local tokens_path = os.getenv("BENCH_TOKENS")
if tokens_path then
  local next_id = 0
  function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
  end

  function init(args)
    local threads = tonumber(os.getenv("BENCH_THREADS"))
    tokens, position, line_number = {}, 0, 0
    for line in io.lines(tokens_path) do
      if line ~= "" then
        if line_number % threads == id then
          tokens[#tokens + 1] = line
        end
        line_number = line_number + 1
      end
    end
  end

  function request()
    -- Past the last token the first comes again: a replay, answered 401 and counted as failed.
    position = position % #tokens + 1
    local headers = { ["Content-Type"] = "application/json" }
    headers["Authorization"] = "Bearer " .. tokens[position]
    return wrk.format("POST", nil, headers, wrk.body)
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"non_2xx":%d,"socket_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.status, errors.connect + errors.read + errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
