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
(``KEYS[4j - 2]``), head hash (``KEYS[4j - 1]``), later-records hash (``KEYS[4j]``) and info
hash (``KEYS[4j + 1]``). ``ARGV``: the nonce, the token's time to live in seconds (0: kept for
good), the head size, the number of cache keys; the appends (their number, then each one's key
number, size, time stored and canonical request, ``""`` for none); the records (their number,
then each one's key number, tag, number of parts and parts, each part ``i, <index>, 0`` or
``p, <append number>, <count>``); the namespace names to keep (their number, then digest and
name of each; only on one server, where ``KEYS[4 * nkeys + 2]`` is the hash of names); then
every sample's bytes, in append order.

A cache key's head hash holds its sample count (field ``#n``) and its first ``head size``
records (``<tag> -> "<position>;<i>,<j>,..."``, position = the order first written); later
records live in the later-records hash (``<tag> -> "<i>,<j>,..."``). A record keeps its place
when it is replaced. Its info hash holds what lookups never read: its canonical request (field
``r``, set by the append that starts at index 0, when it carries one) and when its samples were
stored (field ``t``, ``"<time>*<count>,..."`` runs in sample order, extended by each append).

:data:`FORGET_SCRIPT` forgets the records of a cache key whose tags start with one of the given
prefixes, in one step, and moves later records into the head (up to its size) so they are
still consulted; it replies how many it forgot.
"""

from __future__ import annotations

import hashlib

__all__ = ["COMMIT_SCRIPT", "COMMIT_SHA", "FORGET_SCRIPT", "FORGET_SHA", "RPUSH_CHUNK_SIZE"]

RPUSH_CHUNK_SIZE = 512
"""Samples pushed per RPUSH inside the script (Lua's ``unpack`` takes at most a few thousand)."""

COMMIT_SCRIPT = """
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
local head_size = tonumber(ARGV[3])
local nkeys = tonumber(ARGV[4])
local kinds = {'list', 'hash', 'hash', 'hash'}
local function K(j, q) return KEYS[4 * (j - 1) + 1 + q] end
local counts, headlen, times = {}, {}, {}
for j = 1, nkeys do
  for q = 1, 4 do
    local t = redis.call('TYPE', K(j, q)).ok
    if t ~= 'none' and t ~= kinds[q] then return {-1, tostring(j)} end
  end
  local n = redis.call('HGET', K(j, 2), '#n')
  local stored = redis.call('LLEN', K(j, 1))
  if n then n = tonumber(n) else n = 0 end
  if n ~= stored then return {-1, tostring(j)} end
  counts[j] = n
  headlen[j] = redis.call('HLEN', K(j, 2))
  if headlen[j] > 0 then headlen[j] = headlen[j] - 1 end
end
local pos = 5
local nappends = tonumber(ARGV[pos]); pos = pos + 1
local akey, asize, starts, arequest = {}, {}, {}, {}
for a = 1, nappends do
  local j = tonumber(ARGV[pos]); local c = tonumber(ARGV[pos + 1])
  local when = ARGV[pos + 2]; local request = ARGV[pos + 3]; pos = pos + 4
  akey[a] = j; asize[a] = c; starts[a] = counts[j]; counts[j] = counts[j] + c
  if c > 0 then
    if times[j] == nil then times[j] = redis.call('HGET', K(j, 4), 't') or false end
    local run = when .. '*' .. c
    if times[j] then times[j] = times[j] .. ',' .. run else times[j] = run end
    if starts[a] == 0 and request ~= '' then arequest[a] = request end
  end
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
    local old = redis.call('HGET', K(j, 2), tag)
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
local nnames = tonumber(ARGV[pos]); pos = pos + 1
local names = pos
pos = pos + 2 * nnames
local blob = pos
for a = 1, nappends do
  local c = asize[a]
  local i = 0
  while i < c do
    local n = math.min(RPUSH_CHUNK, c - i)
    redis.call('RPUSH', K(akey[a], 1), unpack(ARGV, blob + i, blob + i + n - 1))
    i = i + n
  end
  blob = blob + c
  if arequest[a] then redis.call('HSET', K(akey[a], 4), 'r', arequest[a]) end
end
for r = 1, nrecords do
  if rhead[r] then redis.call('HSET', K(rkey[r], 2), rtag[r], rval[r])
  else redis.call('HSET', K(rkey[r], 3), rtag[r], rval[r]) end
end
for j = 1, nkeys do
  redis.call('HSET', K(j, 2), '#n', counts[j])
  if times[j] then redis.call('HSET', K(j, 4), 't', times[j]) end
end
for q = 0, nnames - 1 do redis.call('HSET', KEYS[4 * nkeys + 2], ARGV[names + 2 * q], ARGV[names + 2 * q + 1]) end
local result = table.concat(starts, ',')
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1] .. '|' .. result, 'EX', ttl)
else redis.call('SET', KEYS[1], ARGV[1] .. '|' .. result) end
return {1, result}
""".replace("RPUSH_CHUNK", str(RPUSH_CHUNK_SIZE))
COMMIT_SHA = hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest()

FORGET_SCRIPT = """
local head = redis.call('HGETALL', KEYS[1])
local later = redis.call('HGETALL', KEYS[2])
local function gone(tag)
  for i = 2, #ARGV do
    if string.sub(tag, 1, #ARGV[i]) == ARGV[i] then return true end
  end
  return false
end
local kept_head, kept_later, removed = {}, {}, 0
for i = 1, #head, 2 do
  local tag = head[i]
  if tag ~= '#n' then
    if gone(tag) then removed = removed + 1
    else
      local at, rest = string.match(head[i + 1], '^(%d+);(.*)$')
      if at == nil then return -1 end
      kept_head[#kept_head + 1] = {tonumber(at), tag, rest}
    end
  end
end
for i = 1, #later, 2 do
  if gone(later[i]) then removed = removed + 1 else kept_later[#kept_later + 1] = {later[i], later[i + 1]} end
end
if removed == 0 then return 0 end
table.sort(kept_head, function(x, y) return x[1] < y[1] end)
table.sort(kept_later, function(x, y) return x[1] < y[1] end)
for i = 1, #head, 2 do
  if head[i] ~= '#n' then redis.call('HDEL', KEYS[1], head[i]) end
end
redis.call('DEL', KEYS[2])
local size, n = tonumber(ARGV[1]), 0
for _, r in ipairs(kept_head) do redis.call('HSET', KEYS[1], r[2], n .. ';' .. r[3]); n = n + 1 end
for _, r in ipairs(kept_later) do
  if n < size then redis.call('HSET', KEYS[1], r[1], n .. ';' .. r[2]); n = n + 1
  else redis.call('HSET', KEYS[2], r[1], r[2]) end
end
return removed
"""
FORGET_SHA = hashlib.sha1(FORGET_SCRIPT.encode()).hexdigest()
