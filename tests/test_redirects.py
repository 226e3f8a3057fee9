"""The redirect state machine, case by case, without a server."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    ResponseError,
    TryAgainError,
)

from shardcache import (
    CommandError,
    Redirect,
    RedirectPolicy,
    ShardUnavailableError,
    is_ask,
    is_cross_slot,
    is_moved,
    is_tryagain,
    parse_redirect,
)


def wrapped(reply: Exception) -> CommandError:
    return CommandError(str(reply), shard="127.0.0.1:7000/0", reply=reply)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (MovedError("3999 127.0.0.1:6381"), Redirect("MOVED", 3999, "127.0.0.1", 6381)),
        (AskError("42 cache-b:7002"), Redirect("ASK", 42, "cache-b", 7002)),
        (wrapped(MovedError("1 h:1")), Redirect("MOVED", 1, "h", 1)),
        ("MOVED 3999 127.0.0.1:6381", Redirect("MOVED", 3999, "127.0.0.1", 6381)),
        ("ASK 7 [::1]:7000", Redirect("ASK", 7, "::1", 7000)),
        ("ASK 7 ::1:7000", Redirect("ASK", 7, "::1", 7000)),
        (TryAgainError("Multiple keys request during rehashing of slot"), None),
        (ResponseError("WRONGTYPE Operation against a key"), None),
    ],
)
def test_parse_redirect(err: Exception | str, expected: Redirect | None) -> None:
    assert parse_redirect(err) == expected


def test_classifiers_tell_moved_from_ask() -> None:
    moved, ask = MovedError("1 h:1"), AskError("1 h:1")
    assert is_moved(moved)
    assert not is_ask(moved)
    assert is_ask(ask)
    assert not is_moved(ask)
    assert is_moved(wrapped(moved))
    assert is_ask(wrapped(ask))
    assert is_tryagain(TryAgainError("x"))
    assert is_tryagain("TRYAGAIN Multiple keys")
    assert is_cross_slot(wrapped(ClusterCrossSlotError("x")))
    assert is_cross_slot("CROSSSLOT Keys")
    assert not is_moved(ResponseError("ERR"))
    assert not is_tryagain(wrapped(ResponseError("ERR")))


def test_policy_follows_redirects_at_once() -> None:
    policy = RedirectPolicy(max_attempts=5)
    moved = policy.decide(wrapped(MovedError("9 h:2")), 0, idempotent=False)
    assert (moved.action, moved.redirect, moved.delay) == (
        "moved",
        Redirect("MOVED", 9, "h", 2),
        0.0,
    )
    assert policy.decide(wrapped(AskError("9 h:2")), 0, idempotent=False).action == "ask"


def test_policy_backs_off_more_each_time_on_tryagain_and_clusterdown() -> None:
    policy = RedirectPolicy(max_attempts=5, retry_delay=0.01, down_delay=0.1)
    delays = [policy.decide(TryAgainError("x"), n, idempotent=False).delay for n in range(4)]
    assert delays == sorted(delays)
    assert delays[0] == 0.01
    down = policy.decide(ClusterDownError("x"), 0, idempotent=False)
    assert (down.action, down.delay) == ("refresh", 0.1)


def test_policy_retries_an_unreachable_node_only_when_safe() -> None:
    policy = RedirectPolicy()
    never_sent = ShardUnavailableError("refused", sent=False)
    maybe_applied = ShardUnavailableError("reset", sent=True)
    assert policy.decide(never_sent, 0, idempotent=False).action == "refresh"
    assert policy.decide(maybe_applied, 0, idempotent=True).action == "refresh"
    assert policy.decide(maybe_applied, 0, idempotent=False).action == "raise"


def test_policy_gives_up_after_max_attempts_and_on_other_errors() -> None:
    policy = RedirectPolicy(max_attempts=3)
    assert policy.decide(MovedError("1 h:1"), 1, idempotent=False).action == "moved"
    assert policy.decide(MovedError("1 h:1"), 2, idempotent=False).action == "raise"
    assert policy.decide(ResponseError("WRONGTYPE"), 0, idempotent=True).action == "raise"
    assert policy.decide(ClusterCrossSlotError("x"), 0, idempotent=True).action == "raise"
    assert policy.follows(MovedError("1 h:1"))
    assert not policy.follows(ResponseError("ERR"))
    with pytest.raises(ValueError, match="at least 1"):
        RedirectPolicy(max_attempts=0)
