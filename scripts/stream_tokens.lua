-- wrk script for the memory run: every request carries the next of N distinct valid
-- tokens (one per line in FILE), built per request, so N can be a million (the peer
-- harness's many_tokens.lua prebuilds every request, which takes minutes and gigabytes at
-- that size). Thread k of T keeps only the lines i with i % T == k.
--
--   wrk -tT -cC -dDs -s stream_tokens.lua URL -- FILE T
local nthreads = 0
function setup(thread)
    thread:set("tid", nthreads)
    nthreads = nthreads + 1
end

local toks, n, i = {}, 0, 0
local headers = {}

function init(args)
    local file, threads = args[1], tonumber(args[2]) or 1
    local f = assert(io.open(file, "r"), "cannot open token file " .. tostring(file))
    local line = 0
    for tok in f:lines() do
        if #tok > 0 then
            if line % threads == (tid or 0) then
                n = n + 1
                toks[n] = "Bearer " .. tok
            end
            line = line + 1
        end
    end
    f:close()
    assert(n > 0, "no tokens in " .. file)
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["Host"] = headers["Host"] or wrk.host
end

function request()
    i = i % n + 1
    headers["Authorization"] = toks[i]
    return wrk.format(nil, nil, headers)
end
