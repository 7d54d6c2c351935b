"""The Redis engine's commit script (:mod:`cachesaver.store.redis`): one atomic step per commit,
or per hash slot of a commit on a cluster.

What one run of :data:`COMMIT_SCRIPT` does (the server runs one script at a time, so nothing
else sees it half done): if the commit's token key exists, nothing, replying ``{0, <its
value>}``. Otherwise it appends the samples to their keys' lists, writes the records, updates
each key's sample count, sets the token key to ``<nonce>|<starts>`` (with a time to live, or
for good) and replies ``{1, <starts>}``, the first index of each append, comma-separated. A key
holding what cachesaver did not write (a value of the wrong type, or a sample count its list
does not match: samples lost) makes it reply ``{-1, <key number>}`` with nothing written. Every
read comes before the first write, so a full server, which refuses a script's first write,
leaves nothing written either.

Arguments. ``KEYS[1]`` is the token key; then, for the j-th cache key, its samples list
(``KEYS[3j - 1]``), head hash (``KEYS[3j]``) and later-records hash (``KEYS[3j + 1]``).
``ARGV``: the nonce, the token's time to live in seconds (0: kept for good), the head size, the
number of cache keys; the appends (their number, then each one's key number and size); the
records (their number, then each one's key number, tag, number of parts and parts, each part
``i, <index>, 0`` or ``p, <append number>, <count>``); then every sample's bytes, in append order.

A cache key's head hash holds its sample count (field ``#n``) and its first ``head size``
records (``<tag> -> "<position>;<i>,<j>,..."``, position = the order first written); later
records live in the later-records hash (``<tag> -> "<i>,<j>,..."``). A record keeps its place
when it is replaced.
"""

from __future__ import annotations

import hashlib

__all__ = ["COMMIT_SCRIPT", "COMMIT_SHA", "RPUSH_CHUNK_SIZE"]

RPUSH_CHUNK_SIZE = 512
"""Samples pushed per RPUSH inside the script (Lua's ``unpack`` takes at most a few thousand)."""

COMMIT_SCRIPT = """
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
local head_size = tonumber(ARGV[3])
local nkeys = tonumber(ARGV[4])
local kinds = {'list', 'hash', 'hash'}
local counts, headlen = {}, {}
for j = 1, nkeys do
  for q = 1, 3 do
    local t = redis.call('TYPE', KEYS[3 * (j - 1) + 1 + q]).ok
    if t ~= 'none' and t ~= kinds[q] then return {-1, tostring(j)} end
  end
  local n = redis.call('HGET', KEYS[3 * j], '#n')
  local stored = redis.call('LLEN', KEYS[3 * j - 1])
  if n then n = tonumber(n) else n = 0 end
  if n ~= stored then return {-1, tostring(j)} end
  counts[j] = n
  headlen[j] = redis.call('HLEN', KEYS[3 * j])
  if headlen[j] > 0 then headlen[j] = headlen[j] - 1 end
end
local pos = 5
local nappends = tonumber(ARGV[pos]); pos = pos + 1
local akey, asize, starts = {}, {}, {}
for a = 1, nappends do
  local j = tonumber(ARGV[pos]); local c = tonumber(ARGV[pos + 1]); pos = pos + 2
  akey[a] = j; asize[a] = c; starts[a] = counts[j]; counts[j] = counts[j] + c
end
local nrecords = tonumber(ARGV[pos]); pos = pos + 1
local rkey, rtag, rval, rhead = {}, {}, {}, {}
local placed = {}
for r = 1, nrecords do
  local j = tonumber(ARGV[pos]); local tag = ARGV[pos + 1]; local m = tonumber(ARGV[pos + 2]); pos = pos + 3
  local out = {}
  for q = 1, m do
    local kind = ARGV[pos]; local x = tonumber(ARGV[pos + 1]); local y = tonumber(ARGV[pos + 2]); pos = pos + 3
    if kind == 'i' then out[#out + 1] = x
    else for i = 0, y - 1 do out[#out + 1] = starts[x] + i end end
  end
  placed[j] = placed[j] or {}
  local at = placed[j][tag]
  if at == nil then
    local old = redis.call('HGET', KEYS[3 * j], tag)
    if old then
      at = string.match(old, '^(%d+);')
      if at == nil then return {-1, tostring(j)} end
    elseif headlen[j] < head_size then
      at = tostring(headlen[j]); headlen[j] = headlen[j] + 1
    else
      at = false
    end
    placed[j][tag] = at
  end
  rkey[r] = j; rtag[r] = tag; rhead[r] = at
  if at then rval[r] = at .. ';' .. table.concat(out, ',') else rval[r] = table.concat(out, ',') end
end
local blob = pos
for a = 1, nappends do
  local c = asize[a]
  local i = 0
  while i < c do
    local n = math.min(RPUSH_CHUNK, c - i)
    redis.call('RPUSH', KEYS[3 * akey[a] - 1], unpack(ARGV, blob + i, blob + i + n - 1))
    i = i + n
  end
  blob = blob + c
end
for r = 1, nrecords do
  if rhead[r] then redis.call('HSET', KEYS[3 * rkey[r]], rtag[r], rval[r])
  else redis.call('HSET', KEYS[3 * rkey[r] + 1], rtag[r], rval[r]) end
end
for j = 1, nkeys do redis.call('HSET', KEYS[3 * j], '#n', counts[j]) end
local result = table.concat(starts, ',')
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1] .. '|' .. result, 'EX', ttl)
else redis.call('SET', KEYS[1], ARGV[1] .. '|' .. result) end
return {1, result}
""".replace("RPUSH_CHUNK", str(RPUSH_CHUNK_SIZE))
COMMIT_SHA = hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest()
