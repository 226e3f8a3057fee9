"""Sentinel-managed Redis masters (after the Go sentinel client: one pool per named master).

Ours: one lean pool per named master; watcher threads (one per sentinel, so a dead sentinel
costs nothing) that follow the failover events and swap the pool at once, holding commands
for the moment a replica is being promoted so that none reaches the old master then; the
re-ask on connection errors and READONLY replies, which trusts the sentinel with the newest
config epoch; and the ``sentinel_err`` flag. redis-py's ``Sentinel`` keeps the connections to
the sentinels and lists replicas.

Reads go to the master: reading from replicas serves stale data around every failover, so it
is only ever done on request (``read_from_replicas=True``, or `SentinelClient.replica`).

Lifecycle: the watchers start with the client, are daemons, stop on `SentinelClient.close`,
and start again lazily in a forked child (on its first command).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.exceptions import ReadOnlyError
from redis.retry import Retry

from shardcache.config import RedisAddress
from shardcache.connections import RecoveringBatch, RedisShard
from shardcache.dialects import REDIS
from shardcache.errors import (
    ClosedError,
    CommandError,
    ConfigurationError,
    SentinelError,
    ShardError,
    ShardUnavailableError,
    text_of,
)
from shardcache.hashing import HashFunction, Selector, make_selector
from shardcache.lifecycle import forget_after_fork
from shardcache.protocols import REDIS_CAPABILITIES, Dialect, PendingBatch, Shard
from shardcache.stats import ShardReport, redis_report

__all__ = ["SentinelClient", "SentinelMaster", "SentinelReplicaReads"]

logger = logging.getLogger(__name__)

ConnectionFactory = Callable[[str, int], AbstractConnection]
_REASK_INTERVAL = 0.05  # seconds: concurrent failures share one question to the sentinels
_REPLICA_EVENTS = ("+slave", "+sdown", "-sdown")
_EVENTS = (
    *_REPLICA_EVENTS,
    "+switch-master",
    "+promoted-slave",
    "+failover-state-send-slaveof-noone",
    "+failover-end",
    "+failover-end-for-timeout",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
)


def _is_demoted(error: CommandError) -> bool:
    # The old master, now a replica, refuses writes: they were not applied, ask again.
    return isinstance(error.reply, ReadOnlyError)


def _sentinel_addresses(sentinels: Sequence[str | tuple[str, int]]) -> list[tuple[str, int]]:
    if isinstance(sentinels, str) or not sentinels:
        raise ConfigurationError("SentinelClient needs a list of sentinel addresses")
    addresses = []
    for item in sentinels:
        parsed = (
            RedisAddress(host=item[0], port=int(item[1]))
            if isinstance(item, tuple)
            else RedisAddress.parse(item)
        )
        addresses.append((parsed.host, parsed.port))
    return addresses


class SentinelClient:
    """Named masters found through sentinels, one bounded connection pool each.

    ``sentinels`` are ``host:port`` strings or ``(host, port)`` pairs; ``names`` the masters
    to serve. As a topology for `Cache`, keys are hashed over ``names`` with ``hash`` (one
    name: a single-shard topology). ``connection_factory(host, port)`` builds the connections
    to the masters (auth, TLS, timeouts), like the Go client's DialFunc; without it they are
    redis-py connections with ``username``/``password``, the timeouts given and any other
    redis-py connection keyword arguments (``connection_options``, e.g. ``client_name``).
    ``ssl=True`` speaks TLS to the sentinels, the masters and the replicas, with the
    ``ssl_*`` options given (``ssl_ca_certs``, ``ssl_certfile``, ...).
    """

    capabilities = REDIS_CAPABILITIES
    dialect: Dialect = REDIS

    def __init__(
        self,
        sentinels: Sequence[str | tuple[str, int]],
        names: Sequence[str],
        *,
        pool_size: int = 64,
        connection_factory: ConnectionFactory | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        hash: str | HashFunction | Selector = "fnv1a_32",
        watch: bool = True,
        failover_pause: float = 5.0,
        read_from_replicas: bool = False,
        retry_timeout: float = 1.0,
        ssl: bool = False,
        **connection_options: Any,
    ) -> None:
        # 1. parse (no I/O)
        if isinstance(names, str) or not names:
            raise ConfigurationError("SentinelClient needs a list of one or more master names")
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": read_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if sentinel_username is not None:
            sentinel_kwargs["username"] = sentinel_username
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        tls = {k: v for k, v in connection_options.items() if k.startswith("ssl_")}
        if ssl:  # the sentinels, the masters and the replicas alike
            sentinel_kwargs |= {"ssl": True, **tls}
            connection_options = {**connection_options, "connection_class": redis.SSLConnection}
        else:
            connection_options = {k: v for k, v in connection_options.items() if k not in tls}
        self.sentinel = redis.sentinel.Sentinel(
            _sentinel_addresses(sentinels), sentinel_kwargs=sentinel_kwargs
        )
        self.names = list(names)
        self._pool_size = pool_size
        self._pool_timeout = connect_timeout
        self._retry_timeout = retry_timeout
        self._factory = connection_factory
        self._kwargs: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": read_timeout,
            "retry": Retry(NoBackoff(), 0),
            "db": db,
            "username": username,
            "password": password,
            **connection_options,
        }
        self._select = make_selector(hash, self.names)
        self.read_from_replicas = read_from_replicas
        self.failover_pause = failover_pause
        self.closed = False
        self._watch = watch
        self._asked_at: dict[str, float] = {}
        self._epochs: dict[str, int] = {}  # the newest config epoch a sentinel answered
        self._moved_on_event: set[str] = set()  # followed an event since that answer
        self._lent: dict[int, tuple[AbstractConnection, RedisShard]] = {}
        self._replicas: dict[str, RedisShard] = {}  # one pool per replica address
        self._replicas_of: dict[str, list[str]] = {}  # each name's healthy replicas
        self._masters = [SentinelMaster(self, name) for name in self.names]
        self._readers = [SentinelReplicaReads(master) for master in self._masters]
        self._fresh_threads()
        # 2. discover each name's master (asks the sentinels)
        self._current = self._discover()
        # 3. start the watchers
        self._start_watchers()
        forget_after_fork(self)

    def _discover(self) -> dict[str, RedisShard]:
        """Each name's master as the sentinels see it now, with a pool to it."""
        current = {}
        for name in self.names:
            address, self._epochs[name] = self.ask(name)
            current[name] = self._pool_for(address)
        return current

    def __repr__(self) -> str:
        return f"<SentinelClient {self.masters_now()}>"

    # --- the watcher threads' lifecycle ------------------------------------------------------

    def _fresh_threads(self) -> None:
        """Thread state as in a client with no watcher started yet (also in a forked child,
        where the parent's threads do not exist and its locks may be held forever)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._gates = {name: threading.Event() for name in self.names}
        self._pause_until = dict.fromkeys(self.names, 0.0)
        for gate in self._gates.values():
            gate.set()
        self._subscribed: set[tuple[str, int]] = set()
        self._listening: dict[tuple[str, int], Any] = {}  # each watcher's subscription
        self._watchers: list[threading.Thread] = []
        self._watching = not self._watch

    def _start_watchers(self) -> None:
        """One watcher per sentinel, started once per process (again, lazily, in a child)."""
        with self._lock:
            if self._watching or self.closed:
                return
            self._watchers = [
                threading.Thread(
                    target=self._watch_one,
                    args=(sentinel,),
                    name=f"shardcache-sentinel-watcher-{i}",
                    daemon=True,
                )
                for i, sentinel in enumerate(self.sentinel.sentinels)
            ]
            for watcher in self._watchers:
                watcher.start()
            self._watching = True

    def _after_fork(self) -> None:
        self._fresh_threads()
        self._asked_at = {}

    @property
    def threads(self) -> list[threading.Thread]:
        """The watcher threads alive now."""
        return [watcher for watcher in self._watchers if watcher.is_alive()]

    # --- asking the sentinels ---------------------------------------------------------------

    def ask(self, name: str) -> tuple[tuple[str, int], int]:
        """The master of ``name`` and its config epoch, from every sentinel that answers:
        the answer with the highest epoch wins, because right after a failover the sentinels
        that did not lead it still name the old master for a second or two (and the one that
        leads it names its promoted replica: see below).

        `SentinelError` (``sentinel_err=True``) when no sentinel answers or none knows it.
        """
        failures: list[str] = []
        answered = 0
        best: tuple[int, tuple[str, int]] | None = None
        for sentinel in self.sentinel.sentinels:
            try:
                state: dict[str, Any] = sentinel.sentinel_master(name)  # type: ignore[assignment]
            except redis.ResponseError:  # "No such master with that name"
                answered += 1
                continue
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                failures.append(str(exc))
                continue
            answered += 1
            epoch = int(state.get("config-epoch", 0))
            address = (text_of(state["ip"]), int(state["port"]))
            if "failover_in_progress" in text_of(state["flags"]):
                # The leader of a failover takes the new epoch as soon as the replica it
                # promoted answers as a master, but names the old master here until the
                # failover ends (the others name the new one already). Its address of the
                # moment is the promoted replica from then on: read it after the epoch, so
                # the pair is never (new epoch, old master).
                try:
                    found: Any = sentinel.sentinel_get_master_addr_by_name(name)
                except (redis.RedisError, OSError) as exc:
                    failures.append(str(exc))
                    continue
                if found:
                    address = (text_of(found[0]), int(found[1]))
            if best is None or epoch > best[0]:
                best = (epoch, address)
        if best is not None:
            return best[1], best[0]
        if answered:
            raise SentinelError(f"no sentinel knows a master named {name!r}", shard=name)
        raise SentinelError(
            f"no sentinel reachable to find master {name!r}: " + "; ".join(failures), shard=name
        )

    def masters_now(self) -> dict[str, str]:
        """The master address each name's pool leads to now."""
        return {name: shard.id for name, shard in self._current.items()}

    def _pool_for(self, address: tuple[str, int]) -> RedisShard:
        host, port = address
        factory = None
        if self._factory is not None:
            user_factory = self._factory
            factory = lambda: user_factory(host, port)  # noqa: E731
        return RedisShard(
            f"{host}:{port}",
            {**self._kwargs, "host": host, "port": port},
            max_connections=self._pool_size,
            pool_timeout=self._pool_timeout,
            factory=factory,
            retry_timeout=self._retry_timeout,
        )

    def _switch(
        self, name: str, address: tuple[str, int], epoch: int | None, *, force: bool = False
    ) -> bool:
        """Point ``name`` at ``address``; True if that changed anything.

        A sentinel's answer (with its config ``epoch``) older than what we already follow
        is ignored, so a lagging sentinel cannot send us back to a master that was replaced,
        unless ``force`` (our master itself refused to act as one). A pub/sub event
        (``epoch=None``) is news without an epoch: we follow it and keep the epoch we know,
        which is only ever one a sentinel gave (an invented one could outrun the real ones
        and make us ignore every true answer after a missed event); until an answer with a
        newer epoch comes, an answer with the same epoch naming another master is older
        than the event, and ignored. The event's sender asks the sentinels right after.
        """
        wanted = f"{address[0]}:{address[1]}"
        with self._lock:
            if self.closed:
                return False
            known = self._epochs[name]
            if epoch is None:
                self._moved_on_event.add(name)
            elif not force and (epoch < known or (epoch == known and name in self._moved_on_event)):
                return False
            else:
                if epoch > known or force:
                    self._moved_on_event.discard(name)
                self._epochs[name] = epoch if force else max(epoch, known)
            old = self._current[name]
            if old.id == wanted:
                return False
            self._current[name] = self._pool_for(address)
        logger.warning("shardcache: failover: master %s moved from %s to %s", name, old.id, wanted)
        old.retire()  # idle connections now; lent ones when they come back
        return True

    def reask(self, name: str, seen: RedisShard, *, demoted: bool = False) -> bool:
        """After a failure on ``seen``: ask the sentinels again and switch if the master moved
        (``demoted``: ``seen`` answered that it is a replica now). True when ``name`` now
        leads elsewhere than ``seen``."""
        if self._current[name] is not seen:
            return True  # somebody (the watcher, another thread) already switched
        now = time.monotonic()
        if now - self._asked_at.get(name, 0.0) >= _REASK_INTERVAL:
            self._asked_at[name] = now
            try:
                address, epoch = self.ask(name)
                self._switch(name, address, epoch, force=demoted)
            except SentinelError as exc:
                logger.warning("shardcache: %s", exc)
        return self._current[name] is not seen

    # --- the Go client's API -----------------------------------------------------------------

    def current(self, name: str) -> RedisShard:
        try:
            return self._current[name]
        except KeyError:
            raise SentinelError(f"{name!r} is not one of {self.names}", shard=name) from None

    def get_master(self, name: str) -> AbstractConnection:
        """A pooled redis-py connection to the master of ``name`` as of now."""
        shard = self.current(name)
        conn = shard.pool.acquire()
        self._lent[id(conn)] = (conn, shard)
        return conn

    def put_master(self, name: str, conn: AbstractConnection) -> None:
        """Give back a connection from `get_master`; one lent before a failover is closed
        instead of being pooled (its pool was closed when the master moved)."""
        _, shard = self._lent.pop(id(conn), (conn, self.current(name)))
        shard.pool.release(conn)

    @contextmanager
    def master(self, name: str) -> Iterator[AbstractConnection]:
        """``with client.master("bucket0") as conn:``: `get_master`, then `put_master` (or
        close the connection if the block raised)."""
        conn = self.get_master(name)
        try:
            yield conn
        except BaseException:
            _, shard = self._lent.pop(id(conn), (conn, self.current(name)))
            shard.pool.discard(conn)
            raise
        self.put_master(name, conn)

    def replica(self, name: str) -> RedisShard:
        """A replica of ``name`` (one of those the sentinels see as healthy), for reads that
        may be stale; `SentinelError` when there is none. Each replica has one pool, kept
        while the client lives and closed with it."""
        found = self.replica_or_none(name)
        if found is None:
            raise SentinelError(f"{name!r} has no healthy replica", shard=name)
        return found

    def replica_or_none(self, name: str) -> RedisShard | None:
        addresses = self._replicas_of.get(name)
        if addresses is None:
            addresses = self._discover_replicas(name)
        if not addresses:
            return None
        return self._replica_shard(random.choice(addresses))

    def _replica_shard(self, address: str) -> RedisShard:
        shard = self._replicas.get(address)
        if shard is None:
            with self._lock:
                if self.closed:
                    raise ClosedError("this SentinelClient is closed")
                shard = self._replicas.get(address)
                if shard is None:
                    host, _, port = address.rpartition(":")
                    shard = self._replicas[address] = self._pool_for((host, int(port)))
        return shard

    def _discover_replicas(self, name: str) -> list[str]:
        self.current(name)  # an unknown name is an error
        try:
            found = self.sentinel.discover_slaves(name)
        except redis.RedisError as exc:
            raise SentinelError(str(exc), shard=name) from exc
        addresses = [f"{host}:{port}" for host, port in found]
        self._replicas_of[name] = addresses
        return addresses

    def forget_replica(self, name: str, shard: RedisShard) -> None:
        """Stop reading from ``shard`` (it failed) until the replica list is refreshed."""
        # Not asked again at once: the sentinels see a dead replica only after
        # down-after-milliseconds. The next watcher catch-up or replica event refreshes it.
        addresses = self._replicas_of.get(name)
        if addresses and shard.id in addresses:
            self._replicas_of[name] = [a for a in addresses if a != shard.id]

    # --- the watcher -------------------------------------------------------------------------

    @property
    def watching(self) -> list[tuple[str, int]]:
        """The sentinels whose events the watcher is subscribed to now."""
        return sorted(self._subscribed)

    def _watch_one(self, sentinel: redis.Redis) -> None:
        """Follow one sentinel's failover events, reconnecting after any connection problem
        and then asking again about every master (a message may have been missed). One such
        watcher runs per sentinel: only the sentinel leading a failover announces its early
        steps, and any of them may be down."""
        kwargs = sentinel.connection_pool.connection_kwargs
        address = (kwargs["host"], kwargs["port"])
        stopping = self._stopping
        subscribed, listening = self._subscribed, self._listening
        while not stopping.is_set():
            pubsub = listening[address] = sentinel.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*_EVENTS)
                subscribed.add(address)
                for name in self.names:
                    self._catch_up(name)
                while not stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._on_event(message["channel"], message["data"])
            except (redis.ConnectionError, redis.TimeoutError, OSError, SentinelError):
                pass
            except Exception:
                if not stopping.is_set():
                    raise
                # `close` cut the subscription's socket from under this read: done
            finally:
                subscribed.discard(address)
                listening.pop(address, None)
                pubsub.close()
            stopping.wait(0.2)

    def _catch_up(self, name: str) -> None:
        try:
            address, epoch = self.ask(name)
            self._switch(name, address, epoch)
            if name in self._replicas_of:
                self._discover_replicas(name)
        except SentinelError as exc:
            logger.warning("shardcache: %s", exc)

    def _on_event(self, channel: bytes | str, data: bytes | str) -> None:
        channel = text_of(channel)
        fields = text_of(data).split()
        if channel == "+switch-master" and len(fields) == 5:
            if fields[0] in self._current:  # sentinels announce every master they watch
                self._promoted(fields[0], (fields[3], int(fields[4])))
                # The leader's configuration is final now: learn its real epoch (and the
                # replicas). Not earlier: mid-failover the sentinels may still name the old.
                self._catch_up(fields[0])
        elif len(fields) == 8 and fields[4] == "@" and fields[5] in self._gates:
            # "slave <ip:port> <ip> <port> @ <name> <master ip> <master port>"
            if channel in _REPLICA_EVENTS and fields[0] == "slave":
                if fields[5] in self._replicas_of:
                    with contextlib.suppress(SentinelError):
                        self._discover_replicas(fields[5])
            elif channel == "+failover-state-send-slaveof-noone":
                self._pause(fields[5])
            elif channel == "+promoted-slave":
                self._promoted(fields[5], (fields[2], int(fields[3])))
        elif len(fields) == 4 and fields[0] == "master" and fields[1] in self._gates:
            self._gates[fields[1]].set()  # the failover ended or was aborted

    def _pause(self, name: str) -> None:
        # The leader is about to promote a replica: from now on, what reaches the old
        # master would be lost when it is demoted, so hold the commands of this name until
        # the promotion is seen (at most failover_pause seconds), as Redis's own FAILOVER
        # pauses its clients.
        if self.failover_pause > 0:
            self._pause_until[name] = time.monotonic() + self.failover_pause
            self._gates[name].clear()

    def _promoted(self, name: str, address: tuple[str, int]) -> None:
        if name not in self._current:
            return
        # An event names no epoch, and a sentinel may announce a failover late (one that
        # learned it late, or restarted): if the master it names is a replica by now, the
        # event is history. Ask that server before following (the sentinels' answers, with
        # their epochs, come right after).
        if not self._answers_as_replica(address):
            self._switch(name, address, None)
        self._gates[name].set()

    def _answers_as_replica(self, address: tuple[str, int]) -> bool:
        """Whether the server at ``address`` says (ROLE) that it is a replica; False when
        it says otherwise or cannot be asked."""
        probe = self._pool_for(address)
        try:
            role = probe.execute(b"ROLE")
        except ShardError:
            return False
        finally:
            probe.close()
        return bool(role) and role[0] in (b"slave", "slave")

    def is_open(self, name: str) -> bool:
        """False while a failover of ``name`` holds commands back (see `wait_if_paused`)."""
        if not self._watching:
            self._start_watchers()
        return self._gates[name].is_set()

    def wait_if_paused(self, name: str) -> None:
        """Block while a failover of ``name`` is promoting a replica (bounded)."""
        if not self._watching:
            self._start_watchers()  # first use in a forked child
        gate = self._gates[name]
        if gate.is_set():
            return
        remaining = self._pause_until[name] - time.monotonic()
        if remaining <= 0 or not gate.wait(remaining):
            gate.set()  # the promotion was not seen in time: go on with what we know

    def close(self) -> None:
        """Stop the watchers (waiting 5 s at most) and close every pool, the replicas'
        too; later calls raise `ClosedError`."""
        with self._lock:
            self.closed = True
        self._stopping.set()
        for pubsub in list(self._listening.values()):
            connection = pubsub.connection
            if connection is not None:  # wakes its watcher now, not at its next poll
                with contextlib.suppress(Exception):
                    connection.disconnect()
        deadline = time.monotonic() + 5.0
        for watcher in self._watchers:
            if watcher is not threading.current_thread():
                watcher.join(timeout=max(0.0, deadline - time.monotonic()))
        for shard in [*self._current.values(), *self._replicas.values()]:
            shard.close()
        for sentinel in self.sentinel.sentinels:
            sentinel.close()

    # --- the shard protocol ----------------------------------------------------------------

    def shard_for(self, key: bytes, *, read: bool = False) -> Shard:
        shards: Sequence[Shard] = (
            self._readers if read and self.read_from_replicas else self._masters
        )
        return shards[self._select(key)] if len(shards) > 1 else shards[0]

    def group(self, keys: Iterable[bytes], *, read: bool = False) -> dict[Shard, list[list[bytes]]]:
        shards: Sequence[Shard] = (
            self._readers if read and self.read_from_replicas else self._masters
        )
        if len(shards) == 1:
            return {shards[0]: [list(keys)]}
        runs: list[list[bytes]] = [[] for _ in shards]
        select = self._select
        for key in keys:
            runs[select(key)].append(key)
        return {shard: [run] for shard, run in zip(shards, runs, strict=True) if run}

    def shards(self) -> list[SentinelMaster]:
        return list(self._masters)

    def reports(self) -> list[ShardReport]:
        """A `ShardReport` of every name's master and replicas (``group``: the name, and
        what the sentinels say the master is)."""
        found = []
        for name in self.names:
            try:
                seen = ":".join(map(str, self.ask(name)[0]))
            except ShardError as exc:
                seen = f"no answer ({exc})"
            master = self.current(name)
            found.append(redis_report(master, group=f"{name} (sentinels: {seen})"))
            for address in self._discover_replicas(name):
                replica = self._replica_shard(address)
                found.append(redis_report(replica, group=f"{name} replica"))
        return found


class SentinelMaster:
    """The master of one name as a shard: it follows the name's current pool, and after a
    connection error or a READONLY reply asks the sentinels again and retries once, when the
    master has moved and retrying cannot apply a command twice."""

    def __init__(self, owner: SentinelClient, name: str) -> None:
        self.owner = owner
        self.name = name
        self.id = name

    def __repr__(self) -> str:
        return f"<SentinelMaster {self.name} at {self.owner.current(self.name).id}>"

    def execute(self, *args: Any, key: bytes | None = None, idempotent: bool = False) -> Any:
        self.owner.wait_if_paused(self.name)
        shard = self.owner.current(self.name)
        try:
            return shard.execute(*args, key=key, idempotent=idempotent)
        except (ShardUnavailableError, CommandError) as exc:
            return self.recover(args, key, idempotent, exc, shard)

    # What `shardcache.aio` needs: the asyncio path sends to `leaf` (None while a failover
    # holds commands back: the sync path waits for it in a thread), and hands failures that
    # may mean the master moved to the sync repairs below.

    def leaf(self) -> RedisShard | None:
        return self.owner.current(self.name) if self.owner.is_open(self.name) else None

    def recoverable(self, error: ShardError) -> bool:
        return isinstance(error, ShardUnavailableError) or (
            isinstance(error, CommandError) and _is_demoted(error)
        )

    def recover(
        self,
        args: Sequence[Any],
        key: bytes | None,
        idempotent: bool,
        error: ShardError,
        leaf: RedisShard,
    ) -> Any:
        """After ``error`` on ``leaf``: ask the sentinels again and retry once on the new
        master, when the master has moved and retrying cannot apply a command twice."""
        if isinstance(error, ShardUnavailableError):
            moved = self.owner.reask(self.name, leaf)
            if not moved or (error.sent and not idempotent):
                raise error
        elif not self.recoverable(error) or not self.owner.reask(self.name, leaf, demoted=True):
            raise error
        return self.owner.current(self.name).execute(*args, key=key, idempotent=idempotent)

    def settle(
        self,
        commands: Sequence[Sequence[Any]],
        leaf: RedisShard,
        outcome: list[Any] | ShardUnavailableError,
    ) -> list[Any]:
        return _SentinelBatch(self, leaf, commands, outcome=outcome).settle(outcome)

    def begin(self, commands: Sequence[Sequence[Any]]) -> _SentinelBatch:
        self.owner.wait_if_paused(self.name)
        return _SentinelBatch(self, self.owner.current(self.name), commands)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return self.begin(commands).finish()

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        return self.owner.current(self.name).scan(match, count)

    def client(self) -> redis.Redis:
        return self.owner.current(self.name).client()

    def close(self) -> None:
        self.owner.current(self.name).close()


class _SentinelBatch(RecoveringBatch):
    """A batch on a master that, if the master turns out to have moved, is sent again to
    the new one: whole when nothing could have been applied, or just the refused writes."""

    def __init__(
        self,
        master: SentinelMaster,
        shard: RedisShard,
        commands: Sequence[Sequence[Any]],
        *,
        outcome: list[Any] | ShardUnavailableError | None = None,
    ) -> None:
        self.master = master
        self.shard = shard
        super().__init__(shard, commands, outcome=outcome)

    def recover(self, failure: ShardUnavailableError) -> list[Any]:
        client, name = self.master.owner, self.master.name
        if (failure.sent and not self.only_reads) or not client.reask(name, self.shard):
            raise failure
        return client.current(name).pipeline(self.commands)

    def repair(self, replies: list[Any]) -> list[Any]:
        client, name = self.master.owner, self.master.name
        refused = [
            i for i, r in enumerate(replies) if isinstance(r, CommandError) and _is_demoted(r)
        ]
        if refused and client.reask(name, self.shard, demoted=True):
            again = client.current(name).pipeline([self.commands[i] for i in refused])
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        return replies


class SentinelReplicaReads:
    """The reads of one name with ``read_from_replicas``: sent to one of its healthy
    replicas (they may be a little stale), or to the master when it has none or the replica
    fails (reads are safe to send twice)."""

    def __init__(self, master: SentinelMaster) -> None:
        self.master = master
        self.owner = master.owner
        self.name = master.name
        self.id = f"{master.name}/replicas"

    def __repr__(self) -> str:
        return f"<SentinelReplicaReads {self.name}>"

    def execute(self, *args: Any, key: bytes | None = None, idempotent: bool = False) -> Any:
        replica = self.owner.replica_or_none(self.name)
        if replica is None:
            return self.master.execute(*args, key=key, idempotent=idempotent)
        try:
            return replica.execute(*args, key=key, idempotent=idempotent)
        except ShardUnavailableError as exc:
            return self.recover(args, key, idempotent, exc, replica)

    def begin(self, commands: Sequence[Sequence[Any]]) -> PendingBatch:
        replica = self.owner.replica_or_none(self.name)
        if replica is None:
            return self.master.begin(commands)
        return _ReplicaBatch(self, replica, commands)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return self.begin(commands).finish()

    # What `shardcache.aio` needs: the asyncio path reads from the replica natively (or from
    # the master when there is none: None sends the read through the sync path, in a
    # thread), and a failed replica hands the read to the master.

    def leaf(self) -> RedisShard | None:
        return self.owner.replica_or_none(self.name)

    def recoverable(self, error: ShardError) -> bool:
        return isinstance(error, ShardUnavailableError)

    def recover(
        self,
        args: Sequence[Any],
        key: bytes | None,
        idempotent: bool,
        error: ShardError,
        leaf: RedisShard,
    ) -> Any:
        if not isinstance(error, ShardUnavailableError):
            raise error
        self.owner.forget_replica(self.name, leaf)
        return self.master.execute(*args, key=key, idempotent=idempotent)

    def settle(
        self,
        commands: Sequence[Sequence[Any]],
        leaf: RedisShard,
        outcome: list[Any] | ShardUnavailableError,
    ) -> list[Any]:
        return _ReplicaBatch(self, leaf, commands, outcome=outcome).settle(outcome)

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        return self.master.scan(match, count)

    def client(self) -> redis.Redis:
        return self.master.client()

    def close(self) -> None:
        self.master.close()


class _ReplicaBatch(RecoveringBatch):
    """Reads on a replica that, if the replica fails, are read from the master instead."""

    def __init__(
        self,
        reads: SentinelReplicaReads,
        replica: RedisShard,
        commands: Sequence[Sequence[Any]],
        *,
        outcome: list[Any] | ShardUnavailableError | None = None,
    ) -> None:
        self.reads = reads
        self.replica = replica
        super().__init__(replica, commands, outcome=outcome)

    def recover(self, failure: ShardUnavailableError) -> list[Any]:
        self.reads.owner.forget_replica(self.reads.name, self.replica)
        return self.reads.master.pipeline(self.commands)
