-- wrk script for bench/wrk.py: POST the given files round-robin as raw bodies (what /predict of the
-- service, the naive app and the Ray Serve peer all accept), and end with one JSON line.
--   wrk -t1 -c8 -d8s --latency -s bench/wrk_post.lua http://127.0.0.1:8000/predict -- a.tif b.tif
-- WRK_CONTENT_TYPE sets the Content-Type (default image/tiff).

local requests_ = {}
local next_ = 1

function init(args)
  local content_type = os.getenv("WRK_CONTENT_TYPE") or "image/tiff"
  for _, name in ipairs(args) do
    local file = assert(io.open(name, "rb"))
    local body = file:read("*all")
    file:close()
    -- Formatted once per thread: re-formatting a 2.7 MB body per request would cost wrk CPU.
    table.insert(requests_, wrk.format("POST", nil, {["Content-Type"] = content_type}, body))
  end
  assert(#requests_ > 0, "no body files after --")
end

function request()
  local raw = requests_[next_]
  next_ = next_ % #requests_ + 1
  return raw
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
