-- wrk script: plays Traefik's ForwardAuth call. Every request is pre-formatted in init(), so the
-- load generator's per-request cost is the same for every configuration.
-- Arguments: FILE HEADER. Each line of FILE is one value of HEADER (Cookie or Authorization);
-- requests rotate through the lines. No response() callback: it would slow wrk down.
reqs = {}
n, i = 0, 0

function init(args)
  local file, header = args[1], args[2]
  for line in io.lines(file) do
    if line ~= "" then
      n = n + 1
      reqs[n] = wrk.format("GET", wrk.path, {
        ["Host"] = "127.0.0.1",
        ["X-Forwarded-Proto"] = "https",
        ["X-Forwarded-Host"] = "app.example.test",
        ["X-Forwarded-Uri"] = "/dashboard?tab=1",
        ["X-Forwarded-Method"] = "GET",
        ["X-Forwarded-For"] = "192.0.2.10",
        ["User-Agent"] = "wrk-load-harness",
        [header] = line,
      })
    end
  end
  if n == 0 then error("no lines in " .. file) end
end

function request()
  i = i % n + 1
  return reqs[i]
end
