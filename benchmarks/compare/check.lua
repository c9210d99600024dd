-- wrk script: POST bodies from a file, check every answer against the expected one.
-- wrk ... -s check.lua URL -- BODIES EXPECTED MODE TOLERANCE CLASSES
--   BODIES:   lines "id<TAB>json body"
--   EXPECTED: lines "id<TAB>labels,comma,separated<TAB>probabilities,flat,in,class,order"
--   MODE:     "api" (answers with "label" and "probabilities" objects, id in the X-Request-ID header),
--             "v2" (Open Inference Protocol: id in the body, probabilities in outputs[0].data),
--             "get" (GET, answers not checked: the /health ceiling)
-- Globals (not locals) so that done() can read each thread's counts with thread:get().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bodies, ids, expected = {}, {}, {}
  for line in io.lines(args[1]) do
    local id, body = line:match("^([^\t]+)\t(.*)$")
    ids[#ids + 1] = id
    bodies[#bodies + 1] = body
  end
  for line in io.lines(args[2]) do
    local id, labels, probs = line:match("^([^\t]+)\t([^\t]*)\t(.*)$")
    local l, p = {}, {}
    for s in labels:gmatch("[^,]+") do l[#l + 1] = s end
    for s in probs:gmatch("[^,]+") do p[#p + 1] = tonumber(s) end
    expected[id] = {labels = l, probs = p}
  end
  mode, tol = args[3], tonumber(args[4])
  classes = {}
  for s in args[5]:gmatch("[^,]+") do classes[#classes + 1] = s end
  -- Every request formatted once, here: the driver's own CPU per request is shared with the server (same
  -- machine), so it should be as small as it can be, and it is the same for every system.
  requests = {}
  for k = 1, #bodies do
    if mode == "get" then
      requests[k] = wrk.format("GET", nil)
    else
      requests[k] = wrk.format("POST", nil, {["Content-Type"] = "application/json", ["X-Request-ID"] = ids[k]},
                               bodies[k])
    end
  end
  i = math.random(#bodies)
  checked, wrong, bad_status, first_wrong = 0, 0, 0, ""
end

function request()
  i = i % #bodies + 1
  return requests[i]
end

local function fail(why)
  wrong = wrong + 1
  if first_wrong == "" then first_wrong = why end
end

local function api_answer(body)
  local labels, probs = {}, {}
  for l in body:gmatch('"label":"([^"]*)"') do labels[#labels + 1] = l end
  for block in body:gmatch('"probabilities":(%b{})') do
    for _, c in ipairs(classes) do
      probs[#probs + 1] = tonumber(block:match('"' .. c .. '":([^,}]+)'))
    end
  end
  return labels, probs
end

local function v2_answer(body)
  local probs = {}
  local data = body:match('"data":%[([^%]]*)%]')
  if data then
    for s in data:gmatch("[^,]+") do probs[#probs + 1] = tonumber(s) end
  end
  return nil, probs
end

function response(status, headers, body)
  if mode == "get" then
    if status ~= 200 then bad_status = bad_status + 1 end
    return
  end
  if status ~= 200 then
    bad_status = bad_status + 1
    return
  end
  checked = checked + 1
  local id, labels, probs
  if mode == "v2" then
    id = body:match('"id":"([^"]*)"')
    labels, probs = v2_answer(body)
  else
    id = headers["X-Request-ID"] or headers["x-request-id"] or headers["X-Request-Id"]
    labels, probs = api_answer(body)
  end
  local want = id and expected[id]
  if not want then return fail("unknown id " .. tostring(id)) end
  if #probs ~= #want.probs then return fail(id .. ": " .. #probs .. " probabilities, expected " .. #want.probs) end
  for k = 1, #probs do
    if not probs[k] or math.abs(probs[k] - want.probs[k]) > tol then
      return fail(id .. ": probability " .. k .. " = " .. tostring(probs[k]) .. ", expected " .. want.probs[k])
    end
  end
  if labels then
    if #labels ~= #want.labels then return fail(id .. ": " .. #labels .. " labels") end
    for k = 1, #labels do
      if labels[k] ~= want.labels[k] then return fail(id .. ": label " .. labels[k] .. " vs " .. want.labels[k]) end
    end
  end
end

function done(summary, latency, requests)
  local c, w, b, first = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    c = c + t:get("checked")
    w = w + t:get("wrong")
    b = b + t:get("bad_status")
    if first == "" then first = t:get("first_wrong") end
  end
  local e = summary.errors
  io.write(string.format('\nRESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, "non2xx": %d, ' ..
    '"bad_status": %d, "checked": %d, "wrong": %d, "first_wrong": "%s", "p50_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status, b, c, w,
    (first:gsub('"', "'")), latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    latency.mean))
end
