-- wrk script: POST (or the method given as the first argument) with a JSON body, extra
-- "Name: value" headers from the other arguments, and a JSON summary on the last line of stdout.
function init(args)
  wrk.method = args[1] or "POST"
  wrk.body = "{}"
  wrk.headers["Content-Type"] = "application/json"
  for i = 2, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
