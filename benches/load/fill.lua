-- wrk script: sends every line of FILE once as HEADER (see headers.lua), then stops. Used to
-- put one cache entry per valid cookie into portcullis. Arguments: FILE HEADER.
dofile(os.getenv("LOAD_DIR") .. "/headers.lua")

local answered = 0

function response(status, headers, body)
  answered = answered + 1
  if answered >= n then
    wrk.thread:stop()
  end
end
