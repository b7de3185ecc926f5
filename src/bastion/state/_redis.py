"""The state store on Redis (``redis://…``, ``rediss://…``): counters, flags and approvals shared
by a fleet of processes on many machines.

URL: ``redis://[USER:PASSWORD@]HOST:PORT/DB?prefix=NAME`` (``prefix`` default ``bastion``; the
rest is redis-py's URL, e.g. ``socket_timeout=``). Every key is ``{NAME}:…``. Needs the ``redis``
extra.

Each operation that decides something (``take``, ``add``, deciding or consuming an approval,
clearing counters) is one Lua script, so it is atomic across every process: two processes can
never both take the last unit of a limit or both use one approval. A counter is a hash (window,
count) named in an index ordered by name, so a prefix is read in one round trip. Counts are exact
integers (kept and compared as Redis's strings, not as Lua's doubles). A counter of a bounded
window expires two windows after its last change (a session's counters never do), and each write
of one prunes up to 16 expired names from the indexes. A closed store refuses every operation
(``StateError``), as SQLite does, rather than reconnecting.

Redis must keep what it is given: run it with persistence (AOF) and ``maxmemory-policy
noeviction``. A Redis that restarts empty or evicts keys forgets kill switches, limits and
approvals without telling anyone.

Flags (the kill switch) are read on every decision, so they are cached in this process. A
background thread subscribes to the store's channel, where every change is published, and pings
it; the cache is used only while that subscription has answered within ``LIVE_S`` seconds.
A change made by another process reaches this cache one publish later (well under a millisecond
on one host); a change made here is seen here at once. If the subscription drops or goes quiet,
every read goes to Redis until it is back, so a lost message can never keep a stale flag.

Any Redis or network error is raised as ``StateError``: the kernel then denies, naming the store.
Nothing connects when the store is made (the subscription starts at the first flag read, on a
client of its own), so a fleet does not crash while Redis restarts; its decisions are denied
until Redis answers again. A process forked from one that holds the store starts with a client,
an empty flag cache and a subscription of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from bastion._errors import ApprovalError, ConfigError, StateError
from bastion.state._redis_lua import (
    ADD,
    ADD_FACT,
    CLEAR,
    CONSUME,
    COUNTS,
    DECIDE,
    DELETE,
    PUT,
    TAKE,
)
from bastion.state._store import Approval

LIVE_S = 2.0  # the flag cache is trusted while the subscription answered a ping this recently
_FOREVER_S = 1 << 30  # windows this long or longer never expire

_FIELDS = tuple(f.name for f in fields(Approval))


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError("state store 'redis': the redis package is not installed "
                          "(pip install 'bastion[redis]')") from None
    return redis


def _split(url: str) -> tuple[str, str, str]:
    """(URL for redis-py without ``prefix``, key prefix, the URL as shown in errors: without
    user, password or query)."""
    parts = urlsplit(url)
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:  # "Port out of range", a port that is no number
        raise ConfigError(f"state store {parts.scheme}://…: {exc}") from None
    shown = f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = [v for k, v in query if k == "prefix"]
    name = prefix[-1] if prefix else "bastion"
    if not name or any(c in name for c in "{}\0"):
        raise ConfigError(f"state store {shown!r}: prefix must be a non-empty name without "
                          "braces")
    if parts.scheme != "unix" and not re.fullmatch(r"/?[0-9]*", parts.path):
        raise ConfigError(f"state store {shown!r}: the path must be a database number "
                          "(redis://HOST:PORT/0)")
    rest = [(k, v) for k, v in query if k != "prefix"]
    if not any(k == "socket_timeout" for k, _ in rest):
        rest.append(("socket_timeout", "2"))
    if not any(k == "socket_connect_timeout" for k, _ in rest):
        rest.append(("socket_connect_timeout", "2"))
    return parts._replace(query=urlencode(rest)).geturl(), "{" + name + "}:", shown


def _approval(raw: Any) -> Approval:
    """An ``Approval`` from a hash (a dict, or HGETALL's flat list from a script)."""
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    got = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
           for k, v in raw.items()}
    values: dict[str, Any] = {k: float(got[k]) if k in ("created", "expires") else got.get(k, "")
                              for k in _FIELDS}
    return Approval(**values)


class _FlagWatch:
    """The subscription that keeps one store's flag cache fresh (see module docstring)."""

    def __init__(self, client: Any, channel: str):
        self._client = client
        self._channel = channel
        self.changes = 0  # bumped for every change heard and every (re)subscription
        self.live_until = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bastion-redis-flags", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception:  # lost the connection: read through until it is back
                self.live_until = 0.0
                self.changes += 1
                self._stop.wait(0.2)

    def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            pubsub.subscribe(self._channel)
            pinged = 0.0
            while not self._stop.is_set():
                if time.monotonic() - pinged >= LIVE_S / 4:
                    pubsub.ping()
                    pinged = time.monotonic()
                message = pubsub.get_message(timeout=LIVE_S / 4)
                if message is None:
                    continue
                kind = message["type"]
                kind = kind.decode() if isinstance(kind, bytes) else kind
                if kind in ("message", "subscribe"):  # anything before subscribing went unheard
                    self.changes += 1
                if kind in ("message", "subscribe", "pong"):
                    self.live_until = time.monotonic() + LIVE_S
        finally:
            self.live_until = 0.0
            pubsub.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=LIVE_S)
        with contextlib.suppress(Exception):  # its own client: nothing else uses it
            self._client.connection_pool.disconnect()


_OPEN: weakref.WeakSet[RedisStore] = weakref.WeakSet()  # stores open in this process


def _reconnect_all() -> None:
    for store in list(_OPEN):
        store._connect()


os.register_at_fork(after_in_child=_reconnect_all)


class RedisStore:
    """Redis-backed ``StateStore`` shared by every process given the same URL and prefix."""

    def __init__(self, url: str):
        redis = _redis()
        self._target, self._p, self.where = _split(url)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._connect()
        self._index, self._flagkey = self._p + "cx", self._p + "flags"
        self._expiring = self._p + "cxe"  # names of counters that expire, by when
        self._closed = False
        self._mine = 0  # changes made by this process (seen here at once)
        # a forked child (gunicorn --preload, multiprocessing) has none of the parent's
        # threads and may hold its pool's lock as the fork found it: it starts afresh
        _OPEN.add(self)

    def _connect(self) -> None:
        """A client and its scripts of this process's own; the flag cache empty, its
        subscription not started (the first ``flags`` starts it, on a client of its own)."""
        try:
            self._r = _redis().Redis.from_url(self._target)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"state store {self.where!r}: {exc}") from exc
        s = self._r.register_script
        self._take, self._add, self._counts, self._clear, self._delete = (
            s(TAKE), s(ADD), s(COUNTS), s(CLEAR), s(DELETE))
        self._add_fact = s(ADD_FACT)
        self._put, self._decide, self._consume = s(PUT), s(DECIDE), s(CONSUME)
        self._lock = threading.Lock()
        # (the changes seen when the flags were loaded, the flags): one object, replaced whole
        self._cache: tuple[tuple[int, int], dict[str, str]] = ((-1, -1), {})
        self._watch: _FlagWatch | None = None

    def _watching(self) -> _FlagWatch:
        if self._closed:  # a closed store starts nothing (and holds no connection)
            raise StateError(f"state store {self.where!r}: reading flags on a closed store")
        with self._lock:
            if self._watch is None:
                self._watch = _FlagWatch(_redis().Redis.from_url(self._target),
                                         self._p + "flags:changed")
            return self._watch

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        if self._closed:  # as SQLite: a closed store is not silently reopened
            raise StateError(f"state store {self.where!r}: {what} on a closed store")
        try:
            yield
        except self._errors as exc:
            raise StateError(f"state store {self.where!r}: {what} failed: {exc}") from exc

    def _counter(self, key: str) -> str:
        return f"{self._p}c:{key}"

    @staticmethod
    def _ttl_ms(window_s: int) -> int:
        # by Redis's clock, not the caller's (a test may freeze or move its clock): two windows
        # after the last change, the counter's window has passed on any clock that runs
        return 0 if window_s >= _FOREVER_S else 2 * window_s * 1000 + 1000

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        raw = prefix.encode()
        return b"[" + raw, b"(" + raw + b"\xff"  # \xff follows every UTF-8 byte

    def _counter_call(self, script: Any, key: str, window_s: int, now: float,
                      value: int) -> Any:
        with self._io("take" if script is self._take else "add"):
            return script(keys=[self._counter(key), self._index, self._expiring],
                          args=[key, int(now // window_s), int(value), self._ttl_ms(window_s),
                                self._p + "c:"])

    def take(self, key: str, limit: int, window_s: int, now: float) -> tuple[bool, int]:
        ok, n = self._counter_call(self._take, key, window_s, now, limit)
        return bool(ok), int(n)

    def add(self, key: str, amount: int, window_s: int, now: float) -> int:
        return int(self._counter_call(self._add, key, window_s, now, amount))

    def add_fact(self, key: str, window_s: int, now: float, facts: str, body: bytes,
                 ceiling: int | None = None) -> int:
        """``add(key, 1, …)`` and keep ``body`` under ``(facts, the new count)``, atomically;
        nothing when the count is already at ``ceiling`` (then: the count)."""
        with self._io("add_fact"):
            return int(self._add_fact(
                keys=[self._counter(key), self._index, self._expiring, self._p + "f:" + facts],
                args=[key, int(now // window_s), 1, self._ttl_ms(window_s), self._p + "c:",
                      body, "" if ceiling is None else str(int(ceiling))]))

    def facts(self, facts: str, upto: int, since: int = 0) -> dict[int, bytes]:
        """The bodies kept under ``facts`` numbered ``since + 1`` to ``upto``."""
        seqs = list(range(max(since, 0) + 1, upto + 1))
        if not seqs:
            return {}
        with self._io("facts"):
            raw = self._r.hmget(self._p + "f:" + facts, seqs)
        return {n: bytes(v) for n, v in zip(seqs, raw, strict=True) if v is not None}

    def delete_facts(self, facts: str) -> int:
        with self._io("delete_facts"):
            return int(self._r.delete(self._p + "f:" + facts))

    def count(self, key: str, window_s: int, now: float) -> int:
        with self._io("count"):
            w, n = self._r.hmget(self._counter(key), "w", "n")
        return int(n) if w is not None and int(w) - int(now // window_s) in (0, 1) else 0

    def counts(self, prefix: str, window_s: int, now: float) -> dict[str, int]:
        """Every counter whose key starts with ``prefix`` (exactly), in the current window."""
        lo, hi = self._range(prefix)
        with self._io("counts"):
            flat = self._counts(keys=[self._index],
                                args=[lo, hi, self._p + "c:", int(now // window_s)])
        return {k.decode(): int(n) for k, n in zip(flat[::2], flat[1::2], strict=True)}

    def clear_prefix(self, prefix: str) -> int:
        lo, hi = self._range(prefix)
        with self._io("clear_prefix"):
            return int(self._clear(keys=[self._index], args=[lo, hi, self._p + "c:"]))

    def delete(self, keys: Iterable[str]) -> int:
        """Delete the counters named exactly by ``keys``; how many there were."""
        names = list(keys)
        if not names:
            return 0
        with self._io("delete"):
            return int(self._delete(keys=[self._index], args=[self._p + "c:", *names]))

    def flags(self) -> dict[str, str]:
        watch = self._watch or self._watching()
        live = time.monotonic() < watch.live_until and not self._closed
        seen = (watch.changes, self._mine)  # read before loading: a later change reloads
        cached = self._cache
        if live and cached[0] == seen:
            return cached[1]
        with self._io("reading flags"):
            raw = self._r.hgetall(self._flagkey)
        loaded = {k.decode(): v.decode() for k, v in raw.items()}
        self._cache = (seen if live else (-1, -1), loaded)
        return loaded

    def _change(self, op: str, *args: Any) -> Any:
        with self._io("changing a flag"):
            pipe = self._r.pipeline(transaction=True)
            getattr(pipe, op)(self._flagkey, *args)
            pipe.publish(self._p + "flags:changed", args[0])
            result = pipe.execute()[0]
        with self._lock:
            self._mine += 1
        return result

    def set_flag(self, key: str, value: str) -> None:
        self._change("hset", key, value)

    def clear_flag(self, key: str) -> bool:
        return int(self._change("hdel", key)) > 0

    def put_approval(self, approval: Approval) -> None:
        pairs: list[Any] = []
        for name in _FIELDS:
            value = getattr(approval, name)
            pairs += [name, repr(value) if isinstance(value, float) else value]
        with self._io("put_approval"):
            done = self._put(keys=[self._p + "a:" + approval.id, self._p + "ax"],
                             args=[repr(approval.created), *pairs])
        if not done:
            raise StateError(f"state store {self.where!r}: approval {approval.id!r} exists")

    def get_approval(self, approval_id: str) -> Approval | None:
        with self._io("get_approval"):
            raw = self._r.hgetall(self._p + "a:" + approval_id)
        return _approval(raw) if raw else None

    def list_approvals(self, status: str | None = None) -> list[Approval]:
        with self._io("list_approvals"):
            names = self._r.zrange(self._p + "ax", 0, -1)
            pipe = self._r.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(name)
            rows = pipe.execute() if names else []
        found = [_approval(r) for r in rows if r]
        return [a for a in found if status is None or a.status == status]

    def decide_approval(self, approval_id: str, grant: bool, by: str, note: str,
                        now: float) -> Approval:
        with self._io("decide_approval"):
            out = self._decide(keys=[self._p + "a:" + approval_id],
                               args=[repr(float(now)), "granted" if grant else "refused", by,
                                     note])
        verdict = out[0].decode()
        if verdict == "missing":
            raise ApprovalError(f"approval {approval_id!r} not found")
        if verdict == "expired":
            raise ApprovalError(f"approval {approval_id!r} has expired")
        if verdict != "ok":
            raise ApprovalError(f"approval {approval_id!r} is {verdict}")
        return _approval(out[1])

    def consume_approval(self, approval_id: str, digest: str, now: float) -> Approval | None:
        with self._io("consume_approval"):
            out = self._consume(keys=[self._p + "a:" + approval_id],
                                args=[digest, repr(float(now))])
        return _approval(out) if out else None

    def close(self) -> None:
        self._closed = True
        _OPEN.discard(self)
        if self._watch is not None:
            self._watch.close()
        self._r.close()
        self._r.connection_pool.disconnect()
