"""Session store: where snapshots live between replicas, and who may advance a session.

Two implementations behind one async interface, chosen by URL (``open_store``):

* ``memory://``: ``InProcessStore``, a dict with expiry (one process; what ``make serve``
  uses without Redis);
* ``redis://HOST:PORT/DB`` (also ``rediss://``, ``unix://``): ``RedisStore`` over
  ``redis.asyncio``, every check-and-set a Lua script, so replicas can share sessions.

One owner at a time. ``acquire`` grants a lease (owner name, TTL) with a fencing token: an
integer that grows for each session id on every grant (``max(last + 1, now in ms)``, so it keeps
growing even after the counter's key has expired). Writes (``put``, ``delete``) carry the token
and are refused with ``StaleLeaseError`` unless it is the current lease's token, so a replica
that lost its lease (it stalled past the TTL, or another replica stole it) can never overwrite a
newer snapshot. Resume after a replica crash: the dead owner stops renewing, its lease expires
after ``ttl_s`` and any replica may ``acquire``; a replica that knows the owner is gone (its
health check failed, the client says so by reconnecting elsewhere) may ``acquire(steal=True)``
at once, and should the old owner still be alive, its writes are refused by token.

Redis keys (one hash tag per session, so a cluster keeps them in one slot):
``{prefix}{<id>}:snap`` snapshot bytes (PX = the idle TTL of the put), ``{prefix}{<id>}:lease``
hash ``owner``, ``token`` (PX = lease TTL), ``{prefix}{<id>}:fence`` last token (PX = lease TTL).
Nothing lives without a TTL.

Redis unreachable, slow or restarting: every operation raises ``StoreUnavailable`` within
about ``2 * timeout_s`` (socket timeouts, one immediate retry, an overall deadline); callers
keep streaming locally and count the failure. A periodic wave of snapshots goes through
``put_many`` (pipelined, one round trip per 128 sessions), not thousands of concurrent ``put``
calls queueing for the connection pool's ``max_connections``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PREFIX = "s4d:"
MAX_SESSION_ID = 256


class StoreError(Exception):
    """Base of the session store's errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (or did not answer in time); the caller carries on locally."""


class LeaseHeldError(StoreError):
    """Another live owner holds the session's lease."""

    def __init__(self, session_id: str, owner: str, ttl_ms: int):
        super().__init__(f"session {session_id!r} is held by {owner!r} for {ttl_ms} ms more")
        self.session_id, self.owner, self.ttl_ms = session_id, owner, ttl_ms


class StaleLeaseError(StoreError):
    """The caller's token is not the current lease's (expired, released or stolen)."""

    def __init__(self, session_id: str, token: int, current: int | None):
        why = "no live lease" if current is None else f"the current token is {current}"
        super().__init__(f"session {session_id!r}: token {token} is stale ({why})")
        self.session_id, self.token, self.current = session_id, token, current


def _check_id(session_id: str) -> None:
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID:
        raise ValueError(f"a session id is a non-empty string of <= {MAX_SESSION_ID} chars")


def _ms(seconds: float) -> int:
    ms = int(round(seconds * 1000))
    if ms <= 0:
        raise ValueError(f"a TTL must be positive (got {seconds} s)")
    return ms


class SessionStore(ABC):
    """Snapshot bytes per session id, plus leases with fencing tokens. All methods async."""

    url: str

    @abstractmethod
    async def put(self, session_id: str, data: bytes, ttl_s: float, token: int, *,
                  lease_ttl_s: float | None = None) -> None:
        """Store ``data`` for ``ttl_s`` if ``token`` is the current lease's token, else
        ``StaleLeaseError``. ``lease_ttl_s`` also renews the lease in the same round trip."""

    async def put_many(self, items: Sequence[tuple[str, bytes, int]], ttl_s: float, *,
                       lease_ttl_s: float | None = None) -> list[StaleLeaseError | None]:
        """``put`` of many ``(session_id, data, token)`` (one periodic snapshot wave) in as few
        round trips as the store allows. Per item: None (stored) or its ``StaleLeaseError``;
        ``StoreUnavailable`` for the whole wave."""
        out: list[StaleLeaseError | None] = []
        for sid, data, token in items:
            try:
                await self.put(sid, data, ttl_s, token, lease_ttl_s=lease_ttl_s)
                out.append(None)
            except StaleLeaseError as exc:
                out.append(exc)
        return out

    @abstractmethod
    async def get(self, session_id: str) -> bytes | None:
        """The latest snapshot, or None (never stored, deleted or expired)."""

    @abstractmethod
    async def delete(self, session_id: str, token: int) -> None:
        """The session ended: drop its snapshot and lease (``StaleLeaseError`` on a stale token)."""

    @abstractmethod
    async def acquire(self, session_id: str, owner: str, ttl_s: float, *,
                      steal: bool = False) -> int:
        """Take the lease for ``ttl_s``; returns a new fencing token, larger than any earlier one
        of this session. ``LeaseHeldError`` if another owner's lease is live, unless ``steal``.
        The same owner acquiring again gets a new token (its older tokens become stale)."""

    @abstractmethod
    async def renew(self, session_id: str, owner: str, token: int, ttl_s: float) -> None:
        """Extend the lease to ``ttl_s`` from now; ``StaleLeaseError`` if it is no longer ours."""

    @abstractmethod
    async def release(self, session_id: str, owner: str, token: int) -> bool:
        """Give the lease up (detach to another replica, drain). False if it was not ours."""

    async def last_token(self, session_id: str) -> int | None:
        """The last fencing token granted for this session while its fence lives (it expires
        with the lease TTL, and with the data of a restarted Redis), else None. A previous
        owner compares it with its own last token: another grant since means another owner
        took the session over (even if that one has ended it and released the lease)."""
        return None

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    async def healthy(self) -> bool:
        try:
            await self.ping()
        except StoreUnavailable:
            return False
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# ---- in-process -----------------------------------------------------------------------------
@dataclass
class _Lease:
    owner: str
    token: int
    expires: float


class InProcessStore(SessionStore):
    """A dict with expiry: the same semantics as Redis within one process (no I/O, no awaits
    between check and set, so every operation is atomic on the event loop)."""

    def __init__(self, clock=time.monotonic):
        self.url = "memory://"
        self._clock = clock
        self._snaps: dict[str, tuple[bytes, float]] = {}
        self._leases: dict[str, _Lease] = {}
        self._fences: dict[str, tuple[int, float]] = {}  # last token, expiry
        self._tokens = itertools.count(1)  # one counter for all ids: monotone per id too
        self._next_sweep = 0.0

    def _live_lease(self, session_id: str) -> _Lease | None:
        lease = self._leases.get(session_id)
        if lease is not None and lease.expires <= self._clock():
            del self._leases[session_id]
            lease = None
        return lease

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for sid in [k for k, (_, exp) in self._snaps.items() if exp <= now]:
            del self._snaps[sid]
        for sid in [k for k, lease in self._leases.items() if lease.expires <= now]:
            del self._leases[sid]

    def _owned(self, session_id: str, token: int, owner: str | None = None) -> _Lease:
        lease = self._live_lease(session_id)
        if lease is None or lease.token != int(token) or (owner is not None and lease.owner != owner):
            raise StaleLeaseError(session_id, int(token), lease.token if lease else None)
        return lease

    async def put(self, session_id, data, ttl_s, token, *, lease_ttl_s=None):
        _check_id(session_id)
        ttl, lease_ttl = _ms(ttl_s), lease_ttl_s and _ms(lease_ttl_s)
        lease = self._owned(session_id, token)
        now = self._clock()
        self._snaps[session_id] = (bytes(data), now + ttl / 1e3)
        if lease_ttl:
            lease.expires = now + lease_ttl / 1e3
            self._fences[session_id] = (lease.token, lease.expires)
        self._sweep()

    async def get(self, session_id):
        _check_id(session_id)
        item = self._snaps.get(session_id)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._snaps[session_id]
            return None
        return item[0]

    async def delete(self, session_id, token):
        _check_id(session_id)
        self._owned(session_id, token)
        self._snaps.pop(session_id, None)
        self._leases.pop(session_id, None)

    async def acquire(self, session_id, owner, ttl_s, *, steal=False):
        _check_id(session_id)
        ttl = _ms(ttl_s)
        lease = self._live_lease(session_id)
        now = self._clock()
        if lease is not None and lease.owner != owner and not steal:
            raise LeaseHeldError(session_id, lease.owner, int((lease.expires - now) * 1e3))
        token = next(self._tokens)
        self._leases[session_id] = _Lease(owner, token, now + ttl / 1e3)
        self._fences[session_id] = (token, now + ttl / 1e3)
        self._sweep()
        return token

    async def renew(self, session_id, owner, token, ttl_s):
        _check_id(session_id)
        ttl = _ms(ttl_s)
        lease = self._owned(session_id, token, owner)
        lease.expires = self._clock() + ttl / 1e3
        self._fences[session_id] = (lease.token, lease.expires)

    async def release(self, session_id, owner, token):
        _check_id(session_id)
        try:
            self._owned(session_id, token, owner)
        except StaleLeaseError:
            return False
        del self._leases[session_id]
        return True

    async def last_token(self, session_id):
        _check_id(session_id)
        fence = self._fences.get(session_id)
        if fence is None or fence[1] <= self._clock():
            self._fences.pop(session_id, None)
            return None
        return fence[0]

    async def ping(self):
        return None


# ---- Redis ----------------------------------------------------------------------------------
# KEYS[1] lease, KEYS[2] fence; ARGV owner, ttl_ms, steal -> {1, token} | {0, owner, pttl}
_ACQUIRE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'token')
if cur[1] and cur[1] ~= ARGV[1] and ARGV[3] ~= '1' then
  return {0, cur[1], redis.call('PTTL', KEYS[1])}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
if token < now_ms then token = now_ms end
local s = string.format('%d', token)
redis.call('SET', KEYS[2], s, 'PX', ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', s)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, s}
"""

# KEYS[1] lease, KEYS[2] snap, KEYS[3] fence; ARGV token, data, ttl_ms, lease_ttl_ms|''
_PUT = """
local cur = redis.call('HGET', KEYS[1], 'token')
if cur ~= ARGV[1] then return {0, cur or ''} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return {1, cur}
"""

# KEYS[1] lease, KEYS[2] snap; ARGV token
_DELETE = """
local cur = redis.call('HGET', KEYS[1], 'token')
if cur ~= ARGV[1] then return {0, cur or ''} end
redis.call('DEL', KEYS[1], KEYS[2])
return {1, cur}
"""

# KEYS[1] lease, KEYS[2] fence; ARGV owner, token, ttl_ms ('' = release)
_RENEW_OR_RELEASE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'token')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return {0, cur[2] or ''} end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {1, cur[2]}
"""


def _current(value) -> int | None:
    text = value.decode() if isinstance(value, bytes) else str(value or "")
    return int(text) if text else None


class RedisStore(SessionStore):
    """Redis via ``redis.asyncio``: one pooled client, Lua scripts for every check-and-set."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout_s: float = 1.0,
                 max_connections: int = 64):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self.url = url
        self.prefix = prefix
        self.timeout_s = float(timeout_s)
        self._redis_error = RedisError
        # A blocking pool: a burst of snapshots waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=self.timeout_s,
            socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 1),  # one immediate retry: a pooled socket Redis dropped
            health_check_interval=0,
        )
        self._client = aioredis.Redis(connection_pool=pool)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._put = self._client.register_script(_PUT)
        self._delete = self._client.register_script(_DELETE)
        self._renew_or_release = self._client.register_script(_RENEW_OR_RELEASE)

    def _keys(self, session_id: str) -> tuple[str, str, str]:
        _check_id(session_id)
        base = f"{self.prefix}{{{session_id}}}"
        return f"{base}:lease", f"{base}:snap", f"{base}:fence"

    async def _call(self, make):
        """Run one Redis round trip with an overall deadline; any failure -> StoreUnavailable."""
        try:
            return await asyncio.wait_for(make(), 2 * self.timeout_s + 0.5)
        except (self._redis_error, OSError, asyncio.TimeoutError) as exc:
            raise StoreUnavailable(f"session store {self._safe_url()}: "
                                   f"{type(exc).__name__}: {exc}") from exc

    def _safe_url(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or parts.path
        return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}"

    async def put(self, session_id, data, ttl_s, token, *, lease_ttl_s=None):
        lease, snap, fence = self._keys(session_id)
        args = [str(int(token)), bytes(data), _ms(ttl_s), _ms(lease_ttl_s) if lease_ttl_s else ""]
        ok, cur = await self._call(lambda: self._put(keys=[lease, snap, fence], args=args))
        if not ok:
            raise StaleLeaseError(session_id, int(token), _current(cur))

    async def put_many(self, items, ttl_s, *, lease_ttl_s=None, chunk: int = 128):
        ttl, lease_ttl = _ms(ttl_s), _ms(lease_ttl_s) if lease_ttl_s else ""
        out: list[StaleLeaseError | None] = []
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]

            async def wave(part=part):
                async with self._client.pipeline(transaction=False) as pipe:
                    for sid, data, token in part:
                        lease, snap, fence = self._keys(sid)
                        await self._put(keys=[lease, snap, fence], client=pipe,
                                        args=[str(int(token)), bytes(data), ttl, lease_ttl])
                    return await pipe.execute()

            for (sid, _, token), (ok, cur) in zip(part, await self._call(wave)):
                out.append(None if ok else StaleLeaseError(sid, int(token), _current(cur)))
        return out

    async def get(self, session_id):
        _, snap, _ = self._keys(session_id)
        return await self._call(lambda: self._client.get(snap))

    async def delete(self, session_id, token):
        lease, snap, _ = self._keys(session_id)
        ok, cur = await self._call(
            lambda: self._delete(keys=[lease, snap], args=[str(int(token))]))
        if not ok:
            raise StaleLeaseError(session_id, int(token), _current(cur))

    async def acquire(self, session_id, owner, ttl_s, *, steal=False):
        lease, _, fence = self._keys(session_id)
        args = [owner, _ms(ttl_s), "1" if steal else "0"]
        res = await self._call(lambda: self._acquire(keys=[lease, fence], args=args))
        if not res[0]:
            raise LeaseHeldError(session_id, res[1].decode(), int(res[2]))
        return int(res[1])

    async def _renew_release(self, session_id, owner, token, ttl_arg) -> tuple[int, object]:
        lease, _, fence = self._keys(session_id)
        args = [owner, str(int(token)), ttl_arg]
        return await self._call(lambda: self._renew_or_release(keys=[lease, fence], args=args))

    async def renew(self, session_id, owner, token, ttl_s):
        ok, cur = await self._renew_release(session_id, owner, token, _ms(ttl_s))
        if not ok:
            raise StaleLeaseError(session_id, int(token), _current(cur))

    async def release(self, session_id, owner, token):
        ok, _ = await self._renew_release(session_id, owner, token, "")
        return bool(ok)

    async def last_token(self, session_id):
        _, _, fence = self._keys(session_id)
        value = await self._call(lambda: self._client.get(fence))
        return None if value is None else int(value)

    async def ping(self):
        await self._call(self._client.ping)

    async def close(self):
        try:
            await self._client.aclose()
        except (self._redis_error, OSError):
            pass


def open_store(url: str | None, **kwargs) -> SessionStore:
    """``memory://`` (or empty) -> InProcessStore; ``redis://HOST:PORT/DB``, ``rediss://``,
    ``unix://`` -> RedisStore (kwargs: prefix, timeout_s, max_connections)."""
    scheme = urlsplit(url or "memory://").scheme
    if scheme == "memory":
        return InProcessStore()
    if scheme in ("redis", "rediss", "unix"):
        try:
            import redis  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"{url}: the session store needs redis-py (pip install 'redis>=5')"
                             ) from exc
        return RedisStore(url, **kwargs)
    raise ValueError(f"unknown session store URL {url!r}: use memory:// or redis://HOST:PORT/DB")
