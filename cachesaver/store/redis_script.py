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
name of each; only on one server, where ``KEYS[4 * nkeys + 2]`` is the hash of names); the
claims of a shared run (their number, then, if any, the claim states' time to live in ms, then
each claim's claims-hash key number and pending-hash key number (positions in ``KEYS``, after
the others), append number, count and ticket); then every sample's bytes, in append order. A
claim adds the first ``count`` samples of its append to its pending ticket and to the
namespace's claimed set, in the same step as the append (see
:mod:`cachesaver.store.redis_shared` for the claim state's layout); a ticket no longer pending
claims nothing.

A cache key's head hash holds its sample count (field ``#n``) and its first ``head size``
records (``<tag> -> "<position>;<i>,<j>,..."``, position = the order first written); later
records live in the later-records hash (``<tag> -> "<i>,<j>,..."``). A record keeps its place
when it is replaced. Its info hash holds what lookups never read: its canonical request (field
``r``, set by the append that starts at index 0, when it carries one) and when its samples were
stored (field ``t``, ``"<time>*<count>,..."`` runs in sample order, extended by each append).

:data:`FORGET_SCRIPT` forgets the records of a cache key whose tags start with one of the given
prefixes, in one step, and moves later records into the head (up to its size) so they are
still consulted; it replies how many it forgot.

:data:`VIEW_SCRIPT` is the read of a lookup round: the views of many cache keys in one step, so
they are consistent with each other and with every commit (all of a commit, or none of it), and
cost one round trip whatever their number. It only reads (a full server runs it too). The j-th
cache key is given as one argument, its 16-character hash tag then the key, and the script
builds its three names from it and the store's key base (``<prefix>:1:``): its samples list
(``<base>{<tag>}:s:<key>``), head hash (``h:``) and later-records hash (``r:``). ``ARGV``: how
many samples to read along from index 0, the most recorded indices to read instead, the most
records to report (the head size), the number of cache keys, the key base, those keys, then per
cache key the number ``m`` of asked tags and the tags. ``KEYS`` declares every name the script
reads on one hash slot of a cluster (so a node migrating the slot sees them all), the first
key's head hash on one server (for proxies that route a script by its keys), or none: then the script reads the keys of
every hash slot the cluster node it is sent to holds (a script without flags may read any key
of its node), and a key the node cannot read (its slot moved, or migrating) is reported for the
caller to read again by its
slot, through the cluster client. The reply is one flat array (cheaper to build and to parse
than nested ones), the keys' entries one after the other: ``-1`` when nothing is stored for a
key (no head, no asked record); ``-2, <reason>`` when it holds what cachesaver did not write;
``-3`` when it is to be read again by its slot (no ``KEYS`` only: any failure); ``-4, count,
<indices>, <number read>`` and each sample read's ``index, sample`` when its one record is its
one asked tag (the usual replay; a head size of at least 1); else its
sample count, its number of first records and each one's ``tag, "<i>,<j>,..."`` in the order
first written (the tag as its number among the asked ones when it is one: 1 for the first), ``m`` values (per asked tag its indices, or nil), the number of samples read
along and each one's ``index, sample``. When every asked tag has a record, those are the
samples its records name (at most the given number of indices: a replay needs exactly those;
with the ones between them when they lie close together, one LRANGE), else the first ones; only
indices below the count, and never one the list lacks (the caller reads it again, and reports
it).
"""

from __future__ import annotations

import hashlib

__all__ = [
    "CLAIM_FUNCTIONS",
    "COMMIT_SCRIPT",
    "COMMIT_SHA",
    "FORGET_SCRIPT",
    "FORGET_SHA",
    "RPUSH_CHUNK_SIZE",
    "SPLIT_FUNCTION",
    "VIEW_SCRIPT",
    "VIEW_SHA",
]

RPUSH_CHUNK_SIZE = 512
"""Samples pushed per RPUSH inside the script (Lua's ``unpack`` takes at most a few thousand)."""

SPLIT_FUNCTION = r"""
local function split(text, sep)
  local out = {}
  if text == nil or text == false or text == '' then return out end
  local start = 1
  while true do
    local at = string.find(text, sep, start, true)
    if not at then out[#out + 1] = string.sub(text, start); return out end
    out[#out + 1] = string.sub(text, start, at - 1)
    start = at + 1
  end
end
"""
"""Lua ``split(text, sep)``: the parts of ``text`` between each plain ``sep``; none for nil,
false or an empty text. The scripts that parse stored records start with it."""

CLAIM_FUNCTIONS = SPLIT_FUNCTION + r"""
local function num(x) return string.format('%.0f', x) end
local function cs_load(text)
  local cs = {floor = 0, above = {}}
  if not text then return cs end
  local colon = string.find(text, ':', 1, true)
  if colon then
    cs.floor = tonumber(string.sub(text, 1, colon - 1))
    for _, v in ipairs(split(string.sub(text, colon + 1), ',')) do cs.above[tonumber(v)] = true end
  else
    cs.floor = tonumber(text)
  end
  return cs
end
local function cs_dump(cs)
  local parts = {}
  for i, _ in pairs(cs.above) do parts[#parts + 1] = i end
  if #parts == 0 then return num(cs.floor) end
  table.sort(parts)
  for q = 1, #parts do parts[q] = num(parts[q]) end
  return num(cs.floor) .. ':' .. table.concat(parts, ',')
end
local function cs_has(cs, i) return i < cs.floor or cs.above[i] == true end
local function cs_claim(cs, i)
  if i == cs.floor then
    cs.floor = cs.floor + 1
    while cs.above[cs.floor] do cs.above[cs.floor] = nil; cs.floor = cs.floor + 1 end
  elseif i > cs.floor then
    cs.above[i] = true
  end
end
local function cs_release(cs, i)
  if i >= cs.floor then cs.above[i] = nil; return end
  for j = i + 1, cs.floor - 1 do cs.above[j] = true end
  cs.floor = i
end
local function cs_lowest(cs, limit, want, exclude)
  local out = {}
  local i = cs.floor
  while #out < want and i < limit do
    if not cs.above[i] and not exclude[i] then out[#out + 1] = i end
    i = i + 1
  end
  return out
end
local function tk_load(text)
  local f = {}
  local start = 1
  for q = 1, 5 do
    local at = string.find(text, '|', start, true)
    f[q] = string.sub(text, start, at - 1)
    start = at + 1
  end
  local ident = string.sub(text, start)
  local indices = {}
  for _, v in ipairs(split(f[5], ',')) do indices[#indices + 1] = tonumber(v) end
  local use = nil
  if f[3] ~= '' then use = tonumber(f[3]) end
  if ident == '' then ident = nil end
  return {worker = f[1], prefix = f[2], use = use, n = tonumber(f[4]), indices = indices, ident = ident}
end
local function joined(list)
  local parts = {}
  for q = 1, #list do parts[q] = num(list[q]) end
  return table.concat(parts, ',')
end
local function tk_dump(tk)
  local use = ''
  if tk.use then use = num(tk.use) end
  return tk.worker .. '|' .. tk.prefix .. '|' .. use .. '|' .. num(tk.n) .. '|' .. joined(tk.indices) .. '|' .. (tk.ident or '')
end
"""

COMMIT_SCRIPT = CLAIM_FUNCTIONS + """
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
local nclaims = tonumber(ARGV[pos]); pos = pos + 1
local claims, keep = {}, 0
if nclaims > 0 then keep = ARGV[pos]; pos = pos + 1 end
for c = 1, nclaims do
  claims[c] = {tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]), ARGV[pos + 4]}
  pos = pos + 5
end
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
for c = 1, nclaims do
  local ckey, pkey, a, count, ticket = KEYS[claims[c][1]], KEYS[claims[c][2]], claims[c][3], claims[c][4], claims[c][5]
  local text = redis.call('HGET', pkey, ticket)
  if text then
    local tk = tk_load(text)
    local cs = cs_load(redis.call('HGET', ckey, 'c:' .. tk.prefix))
    for i = starts[a], starts[a] + count - 1 do cs_claim(cs, i); tk.indices[#tk.indices + 1] = i end
    redis.call('HSET', ckey, 'c:' .. tk.prefix, cs_dump(cs))
    redis.call('HSET', pkey, ticket, tk_dump(tk))
    redis.call('PEXPIRE', ckey, keep)
    redis.call('PEXPIRE', pkey, keep)
  end
end
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

VIEW_SCRIPT = """
local along, most, head_size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local keys, prefix = tonumber(ARGV[4]), ARGV[5]
local out, n, pos = {}, 0, 6 + keys
local node = #KEYS == 0
local find, sub, call = string.find, string.sub, redis.pcall
local function alien(e)
  if node then return true end
  return 'it holds an entry cachesaver did not write (' .. e .. ')'
end
local function first_written(x, y) return x[1] < y[1] end
local function named(tag, first, m)
  for q = 1, m do if ARGV[first + q - 1] == tag then return q end end
  return tag
end
local function push_samples(list, low, high, count)
  if high >= count then high = count - 1 end
  if high < low then return 0 end
  local got = call('LRANGE', list, low, high)
  if got.err then return alien(got.err) end
  for q = 1, #got do out[n + 1] = low + q - 1; out[n + 2] = got[q]; n = n + 2 end
  return #got
end
local function push_recorded(list, found, m, count)  -- the samples the m texts from out[found + 1] name
  local taken = 0
  local single = m == 1 and tonumber(out[found + 1])
  if single then  -- one record of one sample: the usual replay
    if single >= 0 and single < count then  -- LINDEX: a bulk reply, cheaper than LRANGE's array
      local blob = call('LINDEX', list, single)
      if type(blob) == 'table' then return alien(blob.err) end
      if blob then out[n + 1] = single; out[n + 2] = blob; n = n + 2; taken = 1 end
    end
  else
    local picked, low, high = {}, nil, nil
    for q = 1, m do
      local text = out[found + q]
      local start = 1
      while #picked < most do
        local stop = find(text, ',', start, true)
        local i = tonumber(sub(text, start, (stop or 0) - 1))
        if i == nil or i < 0 then break end
        if i < count then
          picked[#picked + 1] = i
          if low == nil or i < low then low = i end
          if high == nil or i > high then high = i end
        end
        if stop == nil then break end
        start = stop + 1
      end
    end
    if low ~= nil then
      if high - low < 2 * #picked then
        taken = push_samples(list, low, high, count)
      else
        local seen = {}
        for q = 1, #picked do
          local i = picked[q]
          if not seen[i] then
            seen[i] = true
            local blob = call('LINDEX', list, i)
            if type(blob) == 'table' then return alien(blob.err) end
            if blob then out[n + 1] = i; out[n + 2] = blob; n = n + 2; taken = taken + 1 end
          end
        end
      end
    end
  end
  return taken
end
local function view(j, first, m)
  local given = ARGV[5 + j]
  local slot, raw = sub(given, 1, 16), sub(given, 17)
  local h = call('HGETALL', prefix .. '{' .. slot .. '}:h:' .. raw)
  if h.err then return alien(h.err) end
  local count, nrec = 0, 0
  local one_tag, one_rest, placed = nil, nil, nil  -- the only record, or all of them (placed)
  local base = n
  n = n + 2
  for i = 1, #h, 2 do
    local field, value = h[i], h[i + 1]
    if field == '#n' then
      count = tonumber(value)
      if count == nil then return 'its sample count cannot be decoded' end
    else
      local cut = find(value, ';', 1, true)
      if cut == nil or cut == 1 then return 'a replay record cannot be decoded' end
      nrec = nrec + 1
      if nrec == 1 then
        one_tag, one_rest, placed = field, sub(value, cut + 1), value
      else
        if nrec == 2 then
          local cut1 = find(placed, ';', 1, true)
          placed = {{tonumber(sub(placed, 1, cut1 - 1)), one_tag, one_rest}}
        end
        local at = tonumber(sub(value, 1, cut - 1))
        if at == nil then return 'a replay record cannot be decoded' end
        placed[nrec] = {at, field, sub(value, cut + 1)}
      end
    end
  end
  if nrec == 1 and tonumber(sub(placed, 1, find(placed, ';', 1, true) - 1)) == nil then
    return 'a replay record cannot be decoded'  -- its first-written position
  end
  if nrec == 1 and m == 1 and head_size > 0 and one_tag == ARGV[first] then  -- the usual replay
    out[base + 1] = -4; out[base + 2] = count; out[base + 3] = one_rest
    n = base + 4
    local taken = push_recorded(prefix .. '{' .. slot .. '}:s:' .. raw, base + 2, 1, count)
    if type(taken) ~= 'number' then return taken end
    out[base + 4] = taken
    return false
  end
  local shown = nrec
  if nrec > 1 then
    if placed[1][1] == nil then return 'a replay record cannot be decoded' end
    table.sort(placed, first_written)
    if shown > head_size then shown = head_size end
    for q = 1, shown do out[n + 1] = named(placed[q][2], first, m); out[n + 2] = placed[q][3]; n = n + 2 end
  elseif nrec == 1 then
    out[n + 1] = named(one_tag, first, m); out[n + 2] = one_rest; n = n + 2
  end
  local found = n
  local every, any = true, false
  for q = 1, m do
    local tag, value = ARGV[first + q - 1], false
    if nrec == 1 then
      if one_tag == tag then value = one_rest end
    else
      for r = 1, nrec do if placed[r][2] == tag then value = placed[r][3]; break end end
    end
    if value == false then
      value = call('HGET', prefix .. '{' .. slot .. '}:r:' .. raw, tag)
      if type(value) == 'table' then return alien(value.err) end
    end
    out[found + q] = value
    if value then any = true else every = false end
  end
  n = found + m
  if #h == 0 and not any then n = base; return nil end
  out[base + 1] = count; out[base + 2] = shown
  local counted = n + 1
  n = n + 1
  local taken = 0
  local list = prefix .. '{' .. slot .. '}:s:' .. raw
  if m > 0 and every then
    taken = push_recorded(list, found, m, count)
  elseif along > 0 then
    taken = push_samples(list, 0, along - 1, count)
  end
  if type(taken) ~= 'number' then return taken end
  out[counted] = taken
  return false
end
local top = 0
for j = 1, keys do
  local m = tonumber(ARGV[pos])
  local base = n
  local failed = view(j, pos + 1, m)
  pos = pos + m + 1
  if n > top then top = n end
  if failed == nil then n = base; out[n + 1] = -1; n = n + 1
  elseif failed == true then n = base; out[n + 1] = -3; n = n + 1
  elseif failed then n = base; out[n + 1] = -2; out[n + 2] = failed; n = n + 2 end
end
for q = n + 1, top do out[q] = nil end
return out
"""
VIEW_SHA = hashlib.sha1(VIEW_SCRIPT.encode()).hexdigest()
