"""Per-key rate limits (requests and tokens per minute), shared by every router through Redis.

The algorithm is GCRA, the closed form of a token bucket that holds one minute's allowance and
refills continuously (as OpenAI's limits do). Each limit is one number in the hash
`ratelimit:{key_id}` (see router.tenants): its theoretical arrival time (TAT, ms), the moment the
bucket would be full again. Remaining = (window - (TAT - now)) / cost; reset = TAT - now.

- Requests: admitting one adds window/rpm ms to the TAT; refused if that would put the TAT more
  than one window ahead. So at most `rpm` requests in a burst, then `rpm` per minute.
- Tokens are only known when a response ends, so admission checks the budget already spent
  (refused while less than one token is left) and charge_tokens later adds tokens*window/tpm
  ms. A response bigger than the budget leaves a debt that later requests wait out.

Each admit is one EVALSHA of a Lua script, atomic in Redis, so replicas cannot both take the
last unit. Time comes from the caller (`now_ms`) or, by default, from Redis itself (TIME), so
replicas with skewed clocks still agree. The hash expires when both buckets would be full, so
idle keys cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from contract.errors import RateLimited
from router.tenants import ratelimit_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

WINDOW_MS = 60_000

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

# ARGV: now_ms (-1: Redis TIME), window_ms, rpm (0: none), tpm (0: none).
# Returns {admitted, remaining_requests, remaining_tokens, reset_requests_ms, reset_tokens_ms,
# retry_after_ms, refused_by (0 none, 1 requests, 2 tokens)}.
ADMIT_LUA = (
    _NOW_LUA
    + """
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local req = tat('req')
local tok = tat('tok')
local retry = 0
local refused_by = 0
if tpm > 0 then
  local per_token = window / tpm
  if tok - now > window - per_token + eps then  -- less than one token left
    refused_by = 2
    retry = tok - now - window + per_token
  end
end
local rem_req = -1
if rpm > 0 then
  local per_req = window / rpm
  if req + per_req - now > window + eps then
    refused_by = 1
    retry = math.max(retry, req + per_req - now - window)
  elseif refused_by == 0 then
    req = req + per_req
    save(req, tok)
  end
  rem_req = math.floor((window - (req - now)) / per_req + eps)
end
local rem_tok = -1
if tpm > 0 then
  rem_tok = math.max(0, math.floor((window - (tok - now)) * tpm / window + eps))
end
return {refused_by == 0 and 1 or 0, rem_req, rem_tok, math.ceil(req - now),
        math.ceil(tok - now), math.ceil(retry), refused_by}
"""
)

# ARGV: now_ms (-1: Redis TIME), window_ms, tpm, tokens.
CHARGE_LUA = (
    _NOW_LUA
    + """
local tpm = tonumber(ARGV[3])
save(tat('req'), tat('tok') + tonumber(ARGV[4]) * window / tpm)
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
    """A key's two limits; the name in its x-ratelimit-*-{limit} headers and in refused_by."""

    REQUESTS = "requests"
    TOKENS = "tokens"


# Indexed by the admit script's refused_by code.
_REFUSED_BY = (None, Limit.REQUESTS, Limit.TOKENS)
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

    @property
    def retry_after_s(self) -> float:
        return self.retry_after_ms / 1000

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers, for the limits this key has."""
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


class KeyRateLimited(RateLimited):
    """A RateLimited whose response also carries the x-ratelimit-* headers."""

    def __init__(self, decision: Decision) -> None:
        by_tokens = decision.refused_by is Limit.TOKENS
        what = "tokens per minute (TPM)" if by_tokens else "requests per minute (RPM)"
        limit = decision.limit_tokens if by_tokens else decision.limit_requests
        wait = format_reset(decision.retry_after_ms)
        # Whole seconds, rounded up: Retry-After cannot say less, and rounding down invites a
        # retry that is refused again.
        super().__init__(
            f"Rate limit reached for {what}: limit {limit}. Please try again in {wait}.",
            retry_after_s=float(math.ceil(decision.retry_after_s)),
        )
        self.decision = decision

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.decision.headers()}


class RateLimiter:
    """One per router app; every replica's limiter shares the counters in Redis."""

    def __init__(self, redis: Redis[Any], *, window_ms: int = WINDOW_MS) -> None:
        self.window_ms = window_ms
        self._admit = redis.register_script(ADMIT_LUA)
        self._charge = redis.register_script(CHARGE_LUA)

    async def admit(
        self, key_id: str, rpm: int | None, tpm: int | None, now_ms: int | None = None
    ) -> Decision:
        """Take one request from the key's budget if both limits allow it (one round trip)."""
        if rpm is None and tpm is None:
            return UNLIMITED
        args = [-1 if now_ms is None else now_ms, self.window_ms, rpm or 0, tpm or 0]
        raw = await self._admit(keys=[ratelimit_key(key_id)], args=args)
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
        )

    async def charge_tokens(
        self, key_id: str, tokens: int, tpm: int | None, now_ms: int | None = None
    ) -> None:
        """Charge a finished response's tokens (usage.total_tokens) to the key's TPM budget."""
        if tpm is None or tokens <= 0:
            return
        args = [-1 if now_ms is None else now_ms, self.window_ms, tpm, tokens]
        await self._charge(keys=[ratelimit_key(key_id)], args=args)
