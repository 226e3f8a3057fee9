"""What to do when a Redis Cluster node answers "not here": the redirect state machine.

Pure functions and one small policy object, no I/O, so every case is tested without a
server. The cluster topology asks `RedirectPolicy.decide` after each failed attempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    TryAgainError,
)

from shardcache.errors import CommandError

__all__ = [
    "Decision",
    "Redirect",
    "RedirectPolicy",
    "is_ask",
    "is_cross_slot",
    "is_moved",
    "is_tryagain",
    "parse_redirect",
]

_REDIRECT_TEXT = re.compile(r"^(MOVED|ASK) (\d+) (\S*):(\d+)$")


@dataclass(frozen=True)
class Redirect:
    """``MOVED`` (the slot now lives at ``host:port``) or ``ASK`` (this one command only)."""

    kind: Literal["MOVED", "ASK"]
    slot: int
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _reply(err: BaseException | str) -> BaseException | str | None:
    return err.reply if isinstance(err, CommandError) else err


def _text(reply: BaseException | str | None) -> str:
    # redis-py keeps the error code in the text of the errors it has no class for (its
    # older parsers map MOVED, ASK and TRYAGAIN only on cluster clients).
    return reply if isinstance(reply, str) else str(reply or "")


def is_moved(err: BaseException | str) -> bool:
    """The slot has a new owner: update the map and retry there."""
    reply = _reply(err)
    return isinstance(reply, MovedError) or _text(reply).startswith("MOVED ")


def is_ask(err: BaseException | str) -> bool:
    """The key is being migrated: retry this command once on the target, after ASKING."""
    reply = _reply(err)
    if isinstance(reply, AskError):
        return not isinstance(reply, MovedError)  # redis-py makes MovedError an AskError
    return _text(reply).startswith("ASK ")


def is_tryagain(err: BaseException | str) -> bool:
    """A multi-key command hit keys split by a migration: retry after a short pause."""
    reply = _reply(err)
    return isinstance(reply, TryAgainError) or _text(reply).startswith("TRYAGAIN")


def is_cross_slot(err: BaseException | str) -> bool:
    """A multi-key command named keys of several slots: never retried, a caller's bug."""
    reply = _reply(err)
    return isinstance(reply, ClusterCrossSlotError) or _text(reply).startswith("CROSSSLOT")


def is_cluster_down(err: BaseException | str) -> bool:
    reply = _reply(err)
    return isinstance(reply, ClusterDownError) or _text(reply).startswith("CLUSTERDOWN")


def parse_redirect(err: BaseException | str) -> Redirect | None:
    """The redirect in a MOVED or ASK error (redis-py exception, `CommandError`, or the raw
    reply text such as ``"MOVED 3999 127.0.0.1:6381"``); None for any other error."""
    reply = _reply(err)
    if isinstance(reply, AskError):
        kind: Literal["MOVED", "ASK"] = "MOVED" if isinstance(reply, MovedError) else "ASK"
        return Redirect(kind, int(reply.slot_id), reply.host, int(reply.port))
    if reply is not None:
        match = _REDIRECT_TEXT.match(_text(reply).strip())
        if match:
            kind = "MOVED" if match.group(1) == "MOVED" else "ASK"
            host = match.group(3).strip("[]")
            return Redirect(kind, int(match.group(2)), host, int(match.group(4)))
    return None


@dataclass(frozen=True)
class Decision:
    """The next step: follow a redirect, wait and retry, re-read the slot map, or give up."""

    action: Literal["moved", "ask", "retry", "refresh", "raise"]
    redirect: Redirect | None = None
    delay: float = 0.0


class RedirectPolicy:
    """Decides, after attempt number ``attempt`` (0-based) failed with ``err``, ``elapsed``
    seconds after the first failure, what to do.

    Redirects are followed within a time ``budget`` (seconds), not a count: a slot that
    moves, a node that restarts, a cluster that is briefly down all take milliseconds to a
    second to settle, however many attempts that is. MOVED and ASK are followed at once,
    except that a slot MOVED more than once in one call (two nodes bouncing it between
    them, as when a reshard's SETSLOT reached the source before the target) waits a little
    longer each time and re-reads the slot map. TRYAGAIN and CLUSTERDOWN wait and retry;
    anything else is the caller's. ``max_attempts`` caps the attempts within the budget.

    A node that does not answer is not the policy's: the cluster retries elsewhere only
    when the slot map names another node for the slot (`Cluster.execute`), and otherwise
    fails at once.
    """

    def __init__(
        self,
        max_attempts: int = 32,
        retry_delay: float = 0.02,
        down_delay: float = 0.1,
        *,
        budget: float = 1.0,
        bounce_delay: float = 0.005,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if budget <= 0:
            raise ValueError("the redirect budget must be positive seconds")
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.down_delay = down_delay
        self.budget = budget
        self.bounce_delay = bounce_delay

    def decide(
        self,
        err: BaseException,
        attempt: int,
        *,
        idempotent: bool,
        elapsed: float = 0.0,
        moves: int = 0,
    ) -> Decision:
        """``moves``: how many MOVED this call has followed already."""
        left = self.budget - elapsed
        if attempt + 1 >= self.max_attempts or left <= 0:
            return Decision("raise")
        redirect = parse_redirect(err)
        if redirect is not None:
            if redirect.kind == "MOVED" and moves >= 1:  # bounced: let the nodes agree
                delay = min(self.bounce_delay * 2 ** (moves - 1), 0.1, left)
                return Decision("refresh", redirect, delay)
            return Decision("moved" if redirect.kind == "MOVED" else "ask", redirect)
        if is_tryagain(err):
            return Decision("retry", delay=min(self.retry_delay * (attempt + 1), left))
        if is_cluster_down(err):
            return Decision("refresh", delay=min(self.down_delay * (attempt + 1), left))
        return Decision("raise")

    def follows(self, err: BaseException) -> bool:
        """Whether ``err`` is one this policy would retry at all (for replies in a batch)."""
        return parse_redirect(err) is not None or is_tryagain(err) or is_cluster_down(err)
