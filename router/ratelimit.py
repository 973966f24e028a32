"""Per-key limits shared by every router through Redis: requests and tokens per minute, requests
in flight, and the key's and project's token counters.

Rates use GCRA, the closed form of a token bucket that holds one minute's allowance and refills
continuously (as OpenAI's limits do). Each rate is one number in the hash `ratelimit:{key_id}`
(see router.tenants): its theoretical arrival time (TAT, ms), the moment the bucket would be full
again. Remaining = (window - (TAT - now)) / cost; reset = TAT - now.

- Requests: admitting one adds window/rpm ms to the TAT; refused if that would put the TAT more
  than one window ahead. So at most `rpm` requests in a burst, then `rpm` per minute.
- Tokens: a request's size is only known when it ends, so admission reserves its worst case (see
  router.access: prompt estimate plus length bound, capped at the whole TPM so no request waits
  forever) and is refused while less than that remains. `settle` then charges the difference
  between the real usage and the reservation, or gives it back, never moving the TAT before now.
  Concurrent requests can therefore spend no more than the reservations admitted, and a request
  that used more than its reservation leaves a debt later requests wait out.
- In flight: `concurrency:{key_id}` is a sorted set of slot ids (one per request, random: a
  client's request id may repeat) scored by a lease deadline. Admission drops expired leases,
  counts the rest and adds its own; settle removes it. A router that dies mid-request leaks its
  slot only until the lease ends, and the lease is the longest life a request can have, so a
  live request never loses its slot.
- Counters: settle adds the request's prompt and completion tokens to `usage:key:{key_id}` and
  `usage:project:{pid}` (HINCRBY), in the same script: one round trip per request end.

Admit and settle are each one EVALSHA of a Lua script, atomic in Redis, so replicas cannot both
take the last unit. Time comes from the caller (`now_ms`) or, by default, from Redis itself
(TIME), so replicas with skewed clocks still agree. The rate hash and the lease set expire when
nothing is left to remember, so idle keys cost nothing; the counters stay. A script's keys must
share a hash slot in Redis Cluster: these do not, so this expects one Redis (or Sentinel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from contract.errors import RateLimited
from contract.keyspace import DEFAULT_KEYSPACE, Keyspace
from router.tenants import concurrency_key, key_usage_key, project_usage_key, ratelimit_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

WINDOW_MS = 60_000
# Retry-After for a key at its concurrency limit: when a request ends cannot be known.
CONCURRENCY_RETRY_MS: Final = 1000

# Shared preamble: the clock, and a TAT never earlier than now (an idle bucket is simply full).
_NOW_LUA = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = tonumber(ARGV[2])
local eps = 0.001  -- ms; absorbs float error in window / limit
local function tat(field)
  return math.max(tonumber(redis.call('HGET', KEYS[1], field)) or 0, now)
end
local function save(req, tok)
  redis.call('HSET', KEYS[1], 'req', string.format('%.3f', req), 'tok', string.format('%.3f', tok))
  redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(req, tok) - now) + 1)
end
"""

# KEYS: ratelimit, concurrency. ARGV: now_ms (-1: Redis TIME), window_ms, rpm, tpm,
# max_concurrent (0: none for each), reserve (tokens), slot id, lease_ms, concurrency retry.
# Returns {admitted, remaining_requests, remaining_tokens, reset_requests_ms, reset_tokens_ms,
# retry_after_ms, refused_by (0 none, 1 requests, 2 tokens, 3 concurrency)}.
ADMIT_LUA = (
    _NOW_LUA
    + """
local rpm, tpm, max_conc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local reserve = tonumber(ARGV[6])
local req, tok = tat('req'), tat('tok')
local retry, refused_by = 0, 0
if max_conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_conc then
    refused_by, retry = 3, tonumber(ARGV[9])
  end
end
local per_token = tpm > 0 and window / tpm or 0
if tpm > 0 then
  local due = tok + math.max(reserve, 1) * per_token - now - window  -- > 0: not enough left
  if due > eps then
    refused_by, retry = 2, math.max(retry, due)
  end
end
local per_req = rpm > 0 and window / rpm or 0
if rpm > 0 and req + per_req - now > window + eps then
  refused_by, retry = 1, math.max(retry, req + per_req - now - window)
end
if refused_by == 0 then  -- a refused request takes nothing
  req, tok = req + per_req, tok + reserve * per_token
  if rpm > 0 or tpm > 0 then save(req, tok) end
  if max_conc > 0 then
    local lease = tonumber(ARGV[8])
    redis.call('ZADD', KEYS[2], now + lease, ARGV[7])
    redis.call('PEXPIRE', KEYS[2], lease)
  end
end
local rem_req, rem_tok = -1, -1
if rpm > 0 then rem_req = math.floor((window - (req - now)) / per_req + eps) end
if tpm > 0 then rem_tok = math.max(0, math.floor((window - (tok - now)) / per_token + eps)) end
return {refused_by == 0 and 1 or 0, rem_req, rem_tok, math.ceil(req - now),
        math.ceil(tok - now), math.ceil(retry), refused_by}
"""
)

# KEYS: ratelimit, concurrency, usage of the key, usage of the project.
# ARGV: now_ms (-1: Redis TIME), window_ms, tpm (0: none), reserved, prompt tokens,
# completion tokens, slot id ("": held none).
SETTLE_LUA = (
    _NOW_LUA
    + """
local tpm, reserved = tonumber(ARGV[3]), tonumber(ARGV[4])
local prompt, completion = tonumber(ARGV[5]), tonumber(ARGV[6])
if tpm > 0 and prompt + completion ~= reserved then
  -- From the stored TAT, not from now: the reservation may already have refilled.
  local stored = tonumber(redis.call('HGET', KEYS[1], 'tok')) or now
  save(tat('req'), math.max(now, stored + (prompt + completion - reserved) * window / tpm))
end
if ARGV[7] ~= '' then redis.call('ZREM', KEYS[2], ARGV[7]) end
if prompt + completion > 0 then
  for i = 3, 4 do
    redis.call('HINCRBY', KEYS[i], 'prompt_tokens', prompt)
    redis.call('HINCRBY', KEYS[i], 'completion_tokens', completion)
    redis.call('HINCRBY', KEYS[i], 'requests', 1)
  end
end
return 1
"""
)


def format_reset(ms: int) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it: 20ms, 1s, 6m0s, 1m30.5s."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


class Limit(StrEnum):
    """A key's limits; the rates' names are those of their x-ratelimit-*-{limit} headers."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    CONCURRENT = "concurrent"


# Indexed by the admit script's refused_by code.
_REFUSED_BY = (None, Limit.REQUESTS, Limit.TOKENS, Limit.CONCURRENT)
_KINDS = (Limit.REQUESTS.value, Limit.TOKENS.value)  # plain str: formatted on every response


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    limit_requests: int | None  # None: no such limit (the matching fields are None too)
    limit_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_ms: int | None  # until that bucket is full again
    reset_tokens_ms: int | None
    retry_after_ms: int = 0  # when refused: until this request would be admitted
    refused_by: Limit | None = None
    reserved_tokens: int = 0  # what admission reserved (asked for, when refused)
    limit_concurrent: int | None = None

    @property
    def retry_after_s(self) -> float:
        return self.retry_after_ms / 1000

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers, for the rates this key is limited by."""
        headers: dict[str, str] = {}
        for kind in _KINDS:
            limit = getattr(self, f"limit_{kind}")
            if limit is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(getattr(self, f"remaining_{kind}"))
                headers[f"x-ratelimit-reset-{kind}"] = format_reset(
                    getattr(self, f"reset_{kind}_ms")
                )
        return headers

    def error(self) -> KeyRateLimited:
        """The 429 to raise for a refused decision."""
        return KeyRateLimited(self)


UNLIMITED = Decision(True, None, None, None, None, None, None)


def _refusal(decision: Decision) -> tuple[str, str]:
    """The 429's message and code for what refused the request."""
    wait = format_reset(decision.retry_after_ms)
    if decision.refused_by is Limit.CONCURRENT:
        return (
            f"Concurrency limit reached for requests in flight: limit {decision.limit_concurrent}."
            " Please retry when one of this key's requests has finished.",
            "concurrency_limit_exceeded",
        )
    if decision.refused_by is Limit.TOKENS:
        return (
            f"Rate limit reached for tokens per minute (TPM): limit {decision.limit_tokens}, "
            f"this request reserves {decision.reserved_tokens} (its prompt and max tokens). "
            f"Please try again in {wait}.",
            RateLimited.default_code or "",
        )
    return (
        f"Rate limit reached for requests per minute (RPM): limit {decision.limit_requests}. "
        f"Please try again in {wait}.",
        RateLimited.default_code or "",
    )


class KeyRateLimited(RateLimited):
    """A RateLimited whose response also carries the x-ratelimit-* headers."""

    def __init__(self, decision: Decision) -> None:
        message, code = _refusal(decision)
        # Whole seconds, rounded up: Retry-After cannot say less, and rounding down invites a
        # retry that is refused again.
        super().__init__(message, code=code, retry_after_s=float(math.ceil(decision.retry_after_s)))
        self.decision = decision

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.decision.headers()}


class RateLimiter:
    """One per router app; every replica's limiter shares the state in Redis."""

    def __init__(
        self,
        redis: Redis[Any],
        keyspace: Keyspace = DEFAULT_KEYSPACE,
        *,
        window_ms: int = WINDOW_MS,
    ) -> None:
        self.window_ms = window_ms
        self._keyspace = keyspace
        self._admit = redis.register_script(ADMIT_LUA)
        self._settle = redis.register_script(SETTLE_LUA)

    @staticmethod
    def _now(now_ms: int | None) -> int:
        return -1 if now_ms is None else now_ms  # -1: the scripts read Redis's clock

    async def admit(
        self,
        key_id: str,
        rpm: int | None,
        tpm: int | None,
        now_ms: int | None = None,
        *,
        reserve: int = 0,
        max_concurrent: int | None = None,
        slot: str = "",
        lease_ms: int = 0,
    ) -> Decision:
        """Take one request, `reserve` tokens and (with max_concurrent) the slot `slot` (an id
        unique to the request) for `lease_ms` from the key's limits if all allow it (one round
        trip)."""
        if rpm is None and tpm is None and max_concurrent is None:
            return UNLIMITED
        ks = self._keyspace
        limits = [rpm or 0, tpm or 0, max_concurrent or 0]
        claim: list[int | str] = [reserve, slot, lease_ms, CONCURRENCY_RETRY_MS]
        args = [self._now(now_ms), self.window_ms, *limits, *claim]
        keys = [ratelimit_key(ks, key_id), concurrency_key(ks, key_id)]
        raw = await self._admit(keys=keys, args=args)
        admitted, rem_req, rem_tok, reset_req, reset_tok, retry, refused_by = map(int, raw)
        return Decision(
            admitted=bool(admitted),
            limit_requests=rpm,
            limit_tokens=tpm,
            remaining_requests=rem_req if rpm else None,
            remaining_tokens=rem_tok if tpm else None,
            reset_requests_ms=reset_req if rpm else None,
            reset_tokens_ms=reset_tok if tpm else None,
            retry_after_ms=0 if admitted else max(1, retry),
            refused_by=_REFUSED_BY[refused_by],
            reserved_tokens=reserve if tpm else 0,
            limit_concurrent=max_concurrent,
        )

    async def settle(
        self,
        key_id: str,
        project_id: str,
        usage: tuple[int, int],
        *,
        tpm: int | None = None,
        reserved: int = 0,
        slot: str = "",
        now_ms: int | None = None,
    ) -> None:
        """End a request: charge its (prompt, completion) usage to the key's TPM less what
        admission reserved, free its concurrency slot, count its tokens."""
        ks = self._keyspace
        prompt, completion = usage
        charge = [tpm or 0, reserved if tpm else 0, prompt, completion]
        args: list[int | str] = [self._now(now_ms), self.window_ms, *charge, slot]
        keys = [ratelimit_key(ks, key_id), concurrency_key(ks, key_id),
                key_usage_key(ks, key_id), project_usage_key(ks, project_id)]  # fmt: skip
        await self._settle(keys=keys, args=args)
