"""Shared runs and single-flight leases on the Redis engine (:class:`~cachesaver.store.protocol.
SharedRunStore` for :class:`~cachesaver.store.redis.RedisStore`).

Layout (every key under the store's prefix, see :mod:`cachesaver.store.redis`):

* the **run record** of a run id: a hash (a hash slot of its own) with the generation
  (``gen``), one ``w:<worker>`` field per live worker (its deadline, server time in ms) and
  ``dead``, the dead workers in the order they were declared dead; it expires ``ttl_s`` after
  the last join;
* per run generation and cache key, in the cache key's hash slot, the **claims hash** (``c:``):
  ``c:<namespace prefix>`` -> the claimed indices (``"<floor>"`` or
  ``"<floor>:<i>,<j>,..."``: everything below floor, plus those), ``u:<use ident>`` -> the use
  count (``"<count>"`` or ``"<count>:<given back>,..."``) and ``#dead`` (how many dead workers
  were processed here); and the **pending hash** (``p:``): ticket ->
  ``"<worker>|<prefix>|<use>|<n>|<indices>|<ident>"``. Both expire ``keep_s`` after the
  last claim that touched them;
* per cache key, in its hash slot, the **lease** (``l:``):
  ``"<holder>\\n<waiting>\\n#<open>,<late>,<visitor>;<visitor>...\\n<scope>\\t<joined>\\n..."``
  (open ``1`` while joinable, ``0`` once sealed; the holder's worker, then the others whose
  acquires found it; per scope the samples joined) with a time to live (a value without the
  ``#`` line, as written before leases could be joined, is sealed), and beside it
  (``l:...~``) the **trace** a release leaves: its workers, ``;``-separated, for ``trace_s``.
  Taking, joining, sealing, renewing and releasing are one script call per key
  (:data:`LEASE_SCRIPT`); reading leases (what waiters poll) is a plain GET and PTTL;

Atomicity: one Lua script per cache key and claim (:data:`CLAIM_SCRIPT`, the rules of
:mod:`cachesaver.store.shared_rules` in Lua), reading the key's sample count and records from
its head hash, writing the records it completes there, and reading the claimed samples: a
claim of many keys is one pipelined round trip (on a cluster, one per node, the scripts sent
whole: redis-py's cluster pipeline refuses EVALSHA). A claim retried after a lost reply is
applied once: an ask whose ticket is pending gets what it got, a top-up grants what its ticket
holds beyond what the caller knew, releases and settles of a ticket gone do nothing. Claims of
new samples ride in the commit
script of their slot (:mod:`cachesaver.store.redis_script`). Deadlines use the server's clock
(``TIME``), so hosts need not agree on the time; leases expire by the server's own time to live.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import CorruptStoreError, StoreError
from .protocol import (
    CONSULTED_RECORDS,
    Append,
    ClaimNew,
    CommitHook,
    Grant,
    KeyClaimOps,
    Lease,
    LeasesTaken,
    RecordWrite,
    RunRef,
    RunStatus,
    namespace_prefix,
)
from .redis_script import CLAIM_FUNCTIONS, SPLIT_FUNCTION

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["CLAIM_SCRIPT", "LEASE_SCRIPT", "RUN_SCRIPT", "RedisSharedRuns"]

CLAIM_SCRIPT = CLAIM_FUNCTIONS + r"""
local C, P, H, R, S = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local keep = ARGV[2]
local worker = ARGV[3]
local head_size = tonumber(ARGV[4])
local count = tonumber(redis.call('HGET', H, '#n') or '0')
local sets = {}
local function claims(prefix)
  if not sets[prefix] then sets[prefix] = cs_load(redis.call('HGET', C, 'c:' .. prefix)) end
  return sets[prefix]
end
local function record(tag)
  local v = redis.call('HGET', H, tag)
  if v then v = string.sub(v, string.find(v, ';', 1, true) + 1)
  else v = redis.call('HGET', R, tag) end
  if not v then return nil end
  local out = {}
  for _, x in ipairs(split(v, ',')) do out[#out + 1] = tonumber(x) end
  return out
end
local consulted = nil
local function get_consulted()
  if consulted == nil then
    consulted = {}
    local all = redis.call('HGETALL', H)
    for q = 1, #all, 2 do
      if all[q] ~= '#n' then
        local v = all[q + 1]
        local idx = {}
        for _, x in ipairs(split(string.sub(v, string.find(v, ';', 1, true) + 1), ',')) do idx[#idx + 1] = tonumber(x) end
        consulted[all[q]] = idx
      end
    end
  end
  return consulted
end
local function write_record(tag, list)
  local text = joined(list)
  local old = redis.call('HGET', H, tag)
  if old then
    redis.call('HSET', H, tag, string.match(old, '^(%d+);') .. ';' .. text)
  else
    local headlen = redis.call('HLEN', H) - redis.call('HEXISTS', H, '#n')
    if headlen < head_size then
      redis.call('HSET', H, tag, num(headlen) .. ';' .. text)
      if consulted then consulted[tag] = list end
    else
      redis.call('HSET', R, tag, text)
    end
  end
  if consulted and consulted[tag] then consulted[tag] = list end
end
local function next_use(ident)
  local field = 'u:' .. ident
  local text = redis.call('HGET', C, field)
  local n, given = 0, {}
  if text then
    local colon = string.find(text, ':', 1, true)
    if colon then
      n = tonumber(string.sub(text, 1, colon - 1))
      for _, v in ipairs(split(string.sub(text, colon + 1), ',')) do given[#given + 1] = tonumber(v) end
    else
      n = tonumber(text)
    end
  end
  local use, reused
  if #given > 0 then
    table.sort(given)
    use = table.remove(given, 1)
    reused = true
  else
    use = n
    n = n + 1
    reused = false
  end
  if #given > 0 then redis.call('HSET', C, field, num(n) .. ':' .. joined(given))
  else redis.call('HSET', C, field, num(n)) end
  return use, reused
end
local function give_back(tk)
  if tk.ident == nil or tk.use == nil then return end
  local field = 'u:' .. tk.ident
  local text = redis.call('HGET', C, field)
  local n, given = tk.use + 1, {}
  if text then
    local colon = string.find(text, ':', 1, true)
    if colon then
      n = tonumber(string.sub(text, 1, colon - 1))
      given = split(string.sub(text, colon + 1), ',')
    else
      n = tonumber(text)
    end
  end
  for _, v in ipairs(given) do if tonumber(v) == tk.use then return end end
  given[#given + 1] = num(tk.use)
  redis.call('HSET', C, field, num(n) .. ':' .. table.concat(given, ','))
end
local function tag_of(tk)
  if tk.ident == nil or tk.use == nil then return nil end
  return tk.ident .. '/' .. num(tk.use)
end
local function reserved_for(prefix, own)
  local out = {}
  local any = false
  for tag, idx in pairs(get_consulted()) do
    if tag ~= own and string.sub(tag, 1, #prefix) == prefix then
      for _, i in ipairs(idx) do out[i] = true; any = true end
    end
  end
  return out, any
end
local touched = false
local pos = 5
local ndead = tonumber(ARGV[pos]); pos = pos + 1
local seen = tonumber(redis.call('HGET', C, '#dead') or '0')
if ndead > seen then
  local dead = {}
  for q = seen + 1, ndead do dead[ARGV[pos + q - 1]] = true end
  local pend = redis.call('HGETALL', P)
  for q = 1, #pend, 2 do
    local tk = tk_load(pend[q + 1])
    if dead[tk.worker] then redis.call('HDEL', P, pend[q]); give_back(tk) end
  end
  redis.call('HSET', C, '#dead', num(ndead))
  touched = true
end
pos = pos + ndead
local nrel = tonumber(ARGV[pos]); pos = pos + 1
for q = 1, nrel do
  local ticket, clear = ARGV[pos], ARGV[pos + 1]; pos = pos + 2
  local text = redis.call('HGET', P, ticket)
  if text then
    local tk = tk_load(text)
    local cs = claims(tk.prefix)
    for _, i in ipairs(tk.indices) do cs_release(cs, i) end
    give_back(tk)
    redis.call('HDEL', P, ticket)
    local tag = tag_of(tk)
    if clear == '1' and tag then write_record(tag, {}) end
    touched = true
  end
end
local nset = tonumber(ARGV[pos]); pos = pos + 1
for q = 1, nset do
  if redis.call('HDEL', P, ARGV[pos]) == 1 then touched = true end
  pos = pos + 1
end
local results = {}
local function granted(tk, indices, wrote)
  local use = ''
  if tk and tk.use then use = num(tk.use) end
  local w = '0'
  if wrote then w = '1' end
  return use .. ';' .. w .. ';' .. joined(indices)
end
local nask = tonumber(ARGV[pos]); pos = pos + 1
local taken, tickets = {}, {}
for a = 1, nask do
  local ticket, prefix, ident, n = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], tonumber(ARGV[pos + 3]); pos = pos + 4
  local existing = redis.call('HGET', P, ticket)
  if existing then
    local tk = tk_load(existing)
    results[a] = granted(tk, tk.indices, false)
  else
    if ident == '' then ident = nil end
    local use, reused = nil, false
    if ident then use, reused = next_use(ident) end
    local tk = {worker = worker, prefix = prefix, use = use, n = n, indices = {}, ident = ident}
    local recorded = nil
    local tag = tag_of(tk)
    if tag then recorded = record(tag) end
    taken[#taken + 1] = {a, tk, reused, recorded}
    tickets[a] = ticket
    touched = true
  end
end
local function complete(a, tk, due)
  local wrote = false
  local tag = tag_of(tk)
  if due and #tk.indices == tk.n and tag then write_record(tag, tk.indices); wrote = true end
  results[a] = granted(tk, tk.indices, wrote)
  redis.call('HSET', P, tickets[a], tk_dump(tk))
end
local deferred = {}
for _, item in ipairs(taken) do
  local a, tk, reused, recorded = item[1], item[2], item[3], item[4]
  local done = false
  if recorded and #recorded >= tk.n then
    local cs = claims(tk.prefix)
    local ok, distinct = true, {}
    for q = 1, tk.n do
      local i = recorded[q]
      if distinct[i] or i >= count or cs_has(cs, i) then ok = false; break end
      distinct[i] = true
    end
    if ok then
      for q = 1, tk.n do cs_claim(cs, recorded[q]); tk.indices[q] = recorded[q] end
      complete(a, tk, #recorded ~= tk.n or reused)
      done = true
    end
  end
  if not done then deferred[#deferred + 1] = item end
end
for _, item in ipairs(deferred) do
  local a, tk, reused, recorded = item[1], item[2], item[3], item[4]
  local cs = claims(tk.prefix)
  local chosen, inset = {}, {}
  for _, i in ipairs(recorded or {}) do
    if #chosen == tk.n then break end
    if i < count and not cs_has(cs, i) and not inset[i] then chosen[#chosen + 1] = i; inset[i] = true end
  end
  if #chosen < tk.n then
    local avoid, any = reserved_for(tk.prefix, tag_of(tk))
    if any then
      for i, _ in pairs(inset) do avoid[i] = true end
      for _, i in ipairs(cs_lowest(cs, count, tk.n - #chosen, avoid)) do chosen[#chosen + 1] = i; inset[i] = true end
    end
  end
  if #chosen < tk.n then
    for _, i in ipairs(cs_lowest(cs, count, tk.n - #chosen, inset)) do chosen[#chosen + 1] = i; inset[i] = true end
  end
  for _, i in ipairs(chosen) do cs_claim(cs, i) end
  tk.indices = chosen
  local same = recorded ~= nil and #recorded == #chosen
  if same then for q = 1, #chosen do if recorded[q] ~= chosen[q] then same = false; break end end end
  complete(a, tk, tk.use ~= nil and #chosen == tk.n and (reused or not same))
end
local ntop = tonumber(ARGV[pos]); pos = pos + 1
for q = 1, ntop do
  local ticket, have, want = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]); pos = pos + 3
  local text = redis.call('HGET', P, ticket)
  if not text then
    results[nask + q] = ';0;'
  else
    local tk = tk_load(text)
    want = math.min(have + want, tk.n) - #tk.indices
    local cs = claims(tk.prefix)
    local picked, inset = {}, {}
    if want > 0 then
      local avoid, any = reserved_for(tk.prefix, tag_of(tk))
      if any then
        for _, i in ipairs(cs_lowest(cs, count, want, avoid)) do picked[#picked + 1] = i; inset[i] = true end
      end
    end
    if #picked < want then
      for _, i in ipairs(cs_lowest(cs, count, want - #picked, inset)) do picked[#picked + 1] = i; inset[i] = true end
    end
    for _, i in ipairs(picked) do cs_claim(cs, i); tk.indices[#tk.indices + 1] = i end
    local wrote = false
    local tag = tag_of(tk)
    if #picked > 0 and #tk.indices == tk.n and tag then write_record(tag, tk.indices); wrote = true end
    redis.call('HSET', P, ticket, tk_dump(tk))
    local beyond = {}
    for q2 = have + 1, #tk.indices do beyond[#beyond + 1] = tk.indices[q2] end
    results[nask + q] = granted(tk, beyond, wrote)
    touched = true
  end
end
for prefix, cs in pairs(sets) do redis.call('HSET', C, 'c:' .. prefix, cs_dump(cs)) end
if touched or next(sets) ~= nil then
  redis.call('PEXPIRE', C, keep)
  if redis.call('EXISTS', P) == 1 then redis.call('PEXPIRE', P, keep) end
end
local out = {table.concat(results, '|')}
for _, grant in ipairs(results) do
  for _, v in ipairs(split(split(grant, ';')[3], ',')) do
    out[#out + 1] = redis.call('LINDEX', S, tonumber(v)) or false
  end
end
return out
"""

RUN_SCRIPT = CLAIM_FUNCTIONS + r"""
local K = KEYS[1]
local mode, worker, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if mode == 'end' then redis.call('DEL', K); return {''} end
local gen = redis.call('HGET', K, 'gen')
if not gen then
  if mode ~= 'join' then return {''} end
  redis.call('DEL', K)
  gen = ARGV[4]
  redis.call('HSET', K, 'gen', gen)
end
local dead = split(redis.call('HGET', K, 'dead'), ',')
local is_dead = {}
for _, w in ipairs(dead) do is_dead[w] = true end
local name = string.match(worker, '^[^:]*:(.*)$') or ''
local live = {}
local fields = redis.call('HGETALL', K)
for q = 1, #fields, 2 do
  if string.sub(fields[q], 1, 2) == 'w:' then
    local w = string.sub(fields[q], 3)
    local late = tonumber(fields[q + 1]) <= now
    local replaced = mode == 'join' and w ~= worker and name ~= '' and not is_dead[worker]
      and (string.match(w, '^[^:]*:(.*)$') or '') == name
    if late or replaced or (mode == 'leave' and w == worker) then
      if mode ~= 'status' then redis.call('HDEL', K, fields[q]) end
      dead[#dead + 1] = w
      is_dead[w] = true
    else
      live[#live + 1] = w
    end
  end
end
local lost = '0'
if mode == 'join' then
  if is_dead[worker] then
    lost = '1'
  else
    local present = redis.call('HEXISTS', K, 'w:' .. worker) == 1
    redis.call('HSET', K, 'w:' .. worker, num(now + ttl))
    if not present then live[#live + 1] = worker end
  end
end
if mode ~= 'status' then
  if mode == 'leave' and #live == 0 then
    redis.call('DEL', K)
    return {gen, '0', '', table.concat(dead, ','), '1'}
  end
  redis.call('HSET', K, 'dead', table.concat(dead, ','))
  if mode == 'join' and redis.call('PTTL', K) < ttl then redis.call('PEXPIRE', K, ttl) end
end
return {gen, lost, table.concat(live, ','), table.concat(dead, ','), '0'}
"""

LEASE_SCRIPT = SPLIT_FUNCTION + r"""
local K, T = KEYS[1], KEYS[2]
local mode, holder = ARGV[1], ARGV[2]
local cur = redis.call('GET', K)
local owner, waiting, open, late, visitors, scopes, joined = nil, 0, '0', 0, '', {}, {}
if cur then
  local lines = split(cur, '\n')
  owner, waiting = lines[1], tonumber(lines[2])
  local first = 3
  if string.sub(lines[3] or '', 1, 1) == '#' then
    open = string.sub(lines[3], 2, 2)
    local comma = string.find(lines[3], ',', 4, true)
    late = tonumber(string.sub(lines[3], 4, comma - 1))
    visitors = string.sub(lines[3], comma + 1)
    first = 4
  end
  for q = first, #lines do
    local tab = string.find(lines[q], '\t', 1, true)
    if tab then
      scopes[#scopes + 1] = string.sub(lines[q], 1, tab - 1)
      joined[#joined + 1] = tonumber(string.sub(lines[q], tab + 1))
    else
      scopes[#scopes + 1] = lines[q]
      joined[#joined + 1] = 0
    end
  end
end
local function dump()
  local out = {owner, string.format('%d', waiting), '#' .. open .. ',' .. string.format('%d', late) .. ',' .. visitors}
  for q = 1, #scopes do out[#out + 1] = scopes[q] .. '\t' .. string.format('%d', joined[q]) end
  return table.concat(out, '\n')
end
if mode == 'acquire' then
  if cur and owner ~= holder then
    waiting = waiting + 1
    local wanted = false
    for q = 6, #ARGV, 2 do
      for s = 1, #scopes do
        if scopes[s] == ARGV[q] then
          wanted = true
          if open == '1' then joined[s] = joined[s] + tonumber(ARGV[q + 1]) end
        end
      end
    end
    if wanted and open ~= '1' then late = late + 1 end
    if not string.find(';' .. visitors .. ';', ';' .. ARGV[5] .. ';', 1, true) then
      if visitors == '' then visitors = ARGV[5] else visitors = visitors .. ';' .. ARGV[5] end
    end
    redis.call('SET', K, dump(), 'KEEPTTL')
    return {0, dump(), redis.call('PTTL', K)}
  end
  if cur then
    if ARGV[4] == '1' and open ~= '1' then open = '1'; redis.call('SET', K, dump(), 'PX', ARGV[3])
    else redis.call('PEXPIRE', K, ARGV[3]) end
    return {1}
  end
  owner, waiting, open, visitors = holder, 0, ARGV[4], ARGV[5]
  local trace = redis.call('GET', T)
  if trace then
    for _, w in ipairs(split(trace, ';')) do
      if w ~= ARGV[5] then visitors = visitors .. ';' .. w end
    end
    redis.call('DEL', T)
  end
  for q = 6, #ARGV, 2 do scopes[#scopes + 1] = ARGV[q]; joined[#joined + 1] = 0 end
  redis.call('SET', K, dump(), 'PX', ARGV[3])
  return {1}
elseif mode == 'seal' then
  if not cur or owner ~= holder then return {0} end
  open = '0'
  redis.call('SET', K, dump(), 'KEEPTTL')
  return {1, dump(), redis.call('PTTL', K)}
elseif mode == 'renew' then
  if cur and owner == holder then redis.call('PEXPIRE', K, ARGV[3]); return {1} end
  return {0}
elseif mode == 'release' then
  if cur and owner == holder then
    redis.call('DEL', K)
    if tonumber(ARGV[3]) > 0 then redis.call('SET', T, visitors, 'PX', ARGV[3]) end
    return {1, late}
  end
  return {1, 0}
end
return {0}
"""

_SHAS = {script: hashlib.sha1(script.encode()).hexdigest() for script in (CLAIM_SCRIPT, RUN_SCRIPT, LEASE_SCRIPT)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


def _split(value: Any) -> tuple[str, ...]:
    text = _text(value)
    return tuple(text.split(",")) if text else ()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisSharedRuns:
    """Shared runs across hosts on one :class:`~cachesaver.store.redis.RedisStore` (server or
    cluster); see the module docstring."""

    def __init__(self, store: "RedisStore") -> None:
        self._store = store

    # -- running scripts ---------------------------------------------------------------------

    def _scripts(self, calls: Sequence[tuple[str, Sequence[bytes], Sequence[Any]]]) -> list[Any]:
        """Run the (script, keys, args) calls in one pipelined round trip (one per node on a
        cluster); each reply in order, a script error as its exception (redis-py's)."""
        store = self._store
        errors = store._errors
        if not calls:
            return []

        def run() -> list[Any]:
            def build(pipe: Any) -> None:
                for script, keys, args in calls:
                    if store.cluster:  # a cluster pipeline refuses EVALSHA: the script whole
                        pipe.execute_command("EVAL", script, len(keys), *keys, *args)
                    else:
                        pipe.evalsha(_SHAS[script], len(keys), *keys, *args)

            replies = store._pipeline(build)
            if any(isinstance(r, errors.no_script) for r in replies):
                for script in {script for script, _, _ in calls}:  # a restarted server: load again
                    store.client.script_load(script)
                replies = store._pipeline(build)
            return replies

        return store._call("update the shared run on", run)

    def _one(self, script: str, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        (reply,) = self._scripts([(script, keys, args)])
        if isinstance(reply, BaseException):
            raise StoreError(f"Redis at {self._store.location} failed a shared-run step: {reply}") from reply
        return reply

    # -- the run record ----------------------------------------------------------------------

    def _status(self, reply: Any) -> RunStatus | None:
        generation = _text(reply[0])
        if not generation:
            return None
        return RunStatus(generation, _split(reply[2]), _split(reply[3]), _text(reply[1]) == "1")

    def join(self, run_id: str, worker: str, ttl_s: float, generation: str) -> RunStatus:
        self._store._check_open()
        status = self._status(self._one(RUN_SCRIPT, [self._store.run_key(run_id)], ["join", worker, _ms(ttl_s), generation]))
        if status is None:  # a join always leaves a record
            raise StoreError("cachesaver: an internal invariant failed (a join always leaves a record); please report this bug")
        return status

    def leave(self, run_id: str, worker: str) -> None:
        self._store._check_open()
        self._one(RUN_SCRIPT, [self._store.run_key(run_id)], ["leave", worker, 0, ""])

    def status(self, run_id: str) -> RunStatus | None:
        self._store._check_open()
        return self._status(self._one(RUN_SCRIPT, [self._store.run_key(run_id)], ["status", "", 0, ""]))

    def end(self, run_id: str) -> None:
        self._store._check_open()
        self._one(RUN_SCRIPT, [self._store.run_key(run_id)], ["end", "", 0, ""])

    # -- claims --------------------------------------------------------------------------------

    def claim(self, run: RunRef, ops: Mapping[str, KeyClaimOps], keep_s: float) -> dict[str, list[Grant] | StoreError]:
        store = self._store
        store._check_open()
        calls = []
        plans = []
        for key, key_ops in ops.items():
            samples, head, later = store.entry_keys(key)
            claims_key, pending_key = store.claim_keys(run.generation, key)
            args: list[Any] = ["", _ms(keep_s), run.worker, CONSULTED_RECORDS, len(run.dead), *run.dead]
            args.append(len(key_ops.releases))
            for release in key_ops.releases:
                args += [release.ticket, "1" if release.clear_record else "0"]
            args.append(len(key_ops.settles))
            args += [settle.ticket for settle in key_ops.settles]
            args.append(len(key_ops.asks))
            for ask in key_ops.asks:
                args += [ask.ticket, namespace_prefix(ask.namespace), ask.ident or "", ask.n]
            args.append(len(key_ops.top_ups))
            for top_up in key_ops.top_ups:
                args += [top_up.ticket, top_up.have, top_up.want]
            keys = [claims_key, pending_key, head, later, samples]
            calls.append((CLAIM_SCRIPT, keys, args))
            plans.append((key, [a.ticket for a in key_ops.asks] + [t.ticket for t in key_ops.top_ups]))
        replies = self._scripts(calls)
        out: dict[str, list[Grant] | StoreError] = {}
        wrote: set[str] = set()
        for (key, tickets), reply, key_ops in zip(plans, replies, ops.values()):
            try:
                grants = out[key] = self._grants(key, tickets, reply)
            except CorruptStoreError as exc:
                out[key] = exc
                continue
            if any(g.wrote_record for g in grants):
                wrote.update(a.namespace for a in key_ops.asks)
        new = sorted(wrote - store._named)
        if new:  # the names of the namespaces records are kept for (a slot of their own)
            store._name_namespaces(new)
        return out

    def claimed(self, run: RunRef, namespace: str, key: str, below: int) -> int:
        store = self._store
        store._check_open()
        claims_key, _ = store.claim_keys(run.generation, key)
        field = b"c:" + namespace_prefix(namespace).encode()
        text = store._call("read from", lambda: store.client.hget(claims_key, field))
        if not text:
            return 0
        floor, _, above = _text(text).partition(":")
        extra = {int(i) for i in above.split(",")} if above else set()
        return min(int(floor), below) + sum(1 for i in extra if int(floor) <= i < below)

    def _grants(self, key: str, tickets: list[str], reply: Any) -> list[Grant]:
        from .redis import _decode

        if isinstance(reply, BaseException):
            raise self._store._corrupt(key, f"it holds an entry cachesaver did not write ({reply})")
        encoded = _text(reply[0])
        blobs = iter(reply[1:])
        grants = []
        for ticket, part in zip(tickets, encoded.split("|") if tickets else ()):
            use, wrote, indices = part.split(";")
            claimed = tuple(int(i) for i in indices.split(",")) if indices else ()
            samples = {}
            for index in claimed:
                blob = next(blobs)
                if blob is None:
                    raise self._store._corrupt(key, f"sample {index} is missing (evicted, or never stored)")
                samples[index] = _decode(blob, key)
            grants.append(Grant(ticket, int(use) if use else None, claimed, samples, wrote == "1"))
        return grants

    def commit(
        self,
        run: RunRef,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        claims: Sequence[ClaimNew],
        keep_s: float,
        *,
        hook: CommitHook | None = None,
        wait_s: float | None = None,
    ) -> list[int]:
        starts = self._store._commit(appends, records, None, hook, wait_s, claims, run.generation, keep_s)
        if starts is None:  # no token: always applied
            raise StoreError("cachesaver: an internal invariant failed (no token: always applied); please report this bug")
        return starts

    # -- leases --------------------------------------------------------------------------------

    def _lease(self, value: Any, pttl: Any) -> Lease:
        """The Lease a lease key holds (its value and time to live in ms); see the module
        docstring for the value's layout."""
        lines = _text(value).split("\n")
        open_, late, visitors, first = False, 0, 0, 2
        if len(lines) > 2 and lines[2].startswith("#"):
            state, _, who = lines[2][1:].partition(",")[2].partition(",")
            # The first visitor is the holder's own worker.
            open_, late, visitors, first = lines[2][1] == "1", int(state), max(len(who.split(";")) - 1, 0), 3
        scopes, joined = [], []
        for line in lines[first:]:
            scope, _, count = line.partition("\t")
            scopes.append(scope)
            joined.append(int(count) if count else 0)
        return Lease(
            lines[0], tuple(scopes), max(int(pttl), 0) / 1000, int(lines[1]), open_, tuple(joined), late, visitors
        )

    def _lease_keys(self, key: str) -> list[bytes]:
        """The lease of ``key`` and its trace (after a release), in the key's hash slot."""
        lease = self._store.lease_key(key)
        return [lease, lease + b"~"]

    def _lease_calls(self, keys: Sequence[str], *args: Any) -> list[Any]:
        self._store._check_open()
        replies = self._scripts([(LEASE_SCRIPT, self._lease_keys(key), list(args)) for key in keys])
        for reply in replies:
            if isinstance(reply, BaseException):
                raise StoreError(f"Redis at {self._store.location} failed a lease step: {reply}") from reply
        return replies

    def acquire_leases(
        self, wants: Mapping[str, Mapping[str, int]], holder: str, ttl_s: float, *,
        joinable: bool = False, run: RunRef | None = None,
    ) -> LeasesTaken:
        store = self._store
        store._check_open()
        keys = list(wants)
        calls: list[tuple[str, Sequence[bytes], Sequence[Any]]] = []
        who = holder if run is None else run.worker
        for key in keys:
            args: list[Any] = ["acquire", holder, _ms(ttl_s), "1" if joinable else "0", who]
            for scope, count in wants[key].items():
                args += [scope, int(count)]
            calls.append((LEASE_SCRIPT, self._lease_keys(key), args))
        if run is not None:  # the run's live workers, in the same round trip
            calls.append((RUN_SCRIPT, [store.run_key(run.run_id)], ["status", "", 0, ""]))
        replies = self._scripts(calls)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise StoreError(f"Redis at {store.location} failed a lease step: {reply}") from reply
        out: dict[str, Lease | None] = {}
        for key, reply in zip(keys, replies):
            out[key] = None if int(reply[0]) == 1 else self._lease(reply[1], reply[2])
        peers = None
        if run is not None:
            status = self._status(replies[-1])
            peers = 0 if status is None else sum(1 for worker in status.workers if worker != run.worker)
        return LeasesTaken(out, peers)

    def seal_leases(self, keys: Sequence[str], holder: str) -> dict[str, dict[str, int] | None]:
        replies = self._lease_calls(keys, "seal", holder)
        out: dict[str, dict[str, int] | None] = {}
        for key, reply in zip(keys, replies):
            if int(reply[0]) != 1:
                out[key] = None
                continue
            lease = self._lease(reply[1], reply[2])
            out[key] = dict(zip(lease.scopes, lease.joined))
        return out

    def renew_leases(self, keys: Sequence[str], holder: str, ttl_s: float) -> list[str]:
        replies = self._lease_calls(keys, "renew", holder, _ms(ttl_s))
        return [key for key, reply in zip(keys, replies) if int(reply[0]) != 1]

    def release_leases(self, keys: Sequence[str], holder: str, *, trace_s: float = 0.0) -> int:
        trace_ms = _ms(trace_s) if trace_s > 0 else 0
        return sum(int(reply[1]) for reply in self._lease_calls(keys, "release", holder, trace_ms))

    def leases(self, keys: Sequence[str]) -> dict[str, Lease | None]:
        """Plain reads (a GET and a PTTL per key, pipelined; no script): waiters poll this."""
        store = self._store
        store._check_open()
        names = [store.lease_key(key) for key in keys]

        def build(pipe: Any) -> None:
            for name in names:
                pipe.get(name)
                pipe.pttl(name)

        replies = store._call("read the leases from", lambda: store._pipeline(build))
        out: dict[str, Lease | None] = {}
        for position, key in enumerate(keys):
            value, pttl = replies[2 * position], replies[2 * position + 1]
            for reply in (value, pttl):
                if isinstance(reply, BaseException):
                    raise StoreError(f"Redis at {store.location} failed to read a lease: {reply}") from reply
            # A lease read between its GET and PTTL as it expires is gone.
            out[key] = None if value is None or int(pttl) < 0 else self._lease(value, pttl)
        return out
