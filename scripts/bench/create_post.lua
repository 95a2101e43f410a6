-- wrk script for the create-post scenario: POST a JSON body, rotating Bearer tokens.
-- Usage: wrk -t2 -c10 -d10s -s scripts/bench/create_post.lua URL -- TOKENS_FILE
-- TOKENS_FILE holds one access token per line (the harness writes it after logging in).
-- Each wrk thread gets an id in setup() so threads start at different tokens and their post
-- texts never repeat.

local thread_count = 0

function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

local tokens = {}
local counter = 0

function init(args)
  local path = args[1]
  assert(path, "usage: -- TOKENS_FILE")
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    if #line > 0 then
      tokens[#tokens + 1] = line
    end
  end
  file:close()
  assert(#tokens > 0, "no tokens in " .. path)
  thread_id = thread_id or 0
end

function request()
  counter = counter + 1
  local token = tokens[(counter + thread_id) % #tokens + 1]
  local body = string.format(
    '{"content":"wrk load post %d-%d: what a lovely, productive day for a benchmark"}',
    thread_id, counter)
  return wrk.format("POST", nil, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end
