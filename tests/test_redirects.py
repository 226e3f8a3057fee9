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
from shardcache.topologies.cluster import parse_shards


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


def test_an_unreachable_node_is_not_the_policys_to_retry() -> None:
    # The cluster decides (retry where the slot map moved the slot, else fail at once):
    # spending the budget on a node that is down only delays the caller's error.
    policy = RedirectPolicy()
    never_sent = ShardUnavailableError("refused", sent=False)
    assert policy.decide(never_sent, 0, idempotent=True).action == "raise"


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


def test_policy_follows_within_a_time_budget_not_a_count() -> None:
    policy = RedirectPolicy(budget=1.0)
    for attempt in range(20):  # twenty quick attempts are fine while the budget lasts
        assert policy.decide(TryAgainError("x"), attempt, idempotent=False, elapsed=0.5).delay
    assert policy.decide(TryAgainError("x"), 0, idempotent=False, elapsed=1.0).action == "raise"
    late = policy.decide(ClusterDownError("x"), 8, idempotent=False, elapsed=0.95)
    assert late.action == "refresh"
    assert late.delay <= 0.05 + 1e-9
    with pytest.raises(ValueError, match="positive"):
        RedirectPolicy(budget=0)


def test_a_slot_bounced_between_two_nodes_backs_off_and_rereads_the_map() -> None:
    policy = RedirectPolicy(bounce_delay=0.005)
    first = policy.decide(MovedError("9 h:2"), 0, idempotent=False, moves=0)
    assert (first.action, first.delay) == ("moved", 0.0)  # the first MOVED: follow at once
    delays = []
    for moves in range(1, 8):
        bounce = policy.decide(MovedError("9 h:1"), moves, idempotent=False, moves=moves)
        assert bounce.action == "refresh"
        assert bounce.redirect == Redirect("MOVED", 9, "h", 1)
        delays.append(bounce.delay)
    assert delays == sorted(delays)
    assert delays[0] == 0.005
    assert max(delays) <= 0.1


def _node(role: bytes, health: bytes, **ports: int) -> list[object]:
    # One member of a CLUSTER SHARDS reply, as RESP2 hands it over: a flat list of pairs.
    pairs: list[object] = [b"id", b"x" * 40, b"ip", b"10.0.0.1"]
    for name, port in ports.items():
        pairs += [name.replace("_", "-").encode(), port]
    return [*pairs, b"role", role, b"health", health]


def test_the_slot_map_dials_the_tls_port_when_the_cluster_is_tls() -> None:
    both = [
        [
            b"slots",
            [0, 16383],
            b"nodes",
            [
                _node(b"master", b"online", port=7000, tls_port=8000),
                _node(b"replica", b"online", port=7001, tls_port=8001),
            ],
        ]
    ]
    assert parse_shards(both, False, "h") == [("10.0.0.1:7000", ("10.0.0.1:7001",), [(0, 16383)])]
    assert parse_shards(both, True, "h") == [("10.0.0.1:8000", ("10.0.0.1:8001",), [(0, 16383)])]
    tls_only = [[b"slots", [0, 16383], b"nodes", [_node(b"master", b"online", tls_port=8000)]]]
    assert parse_shards(tls_only, True, "h")[0][0] == "10.0.0.1:8000"  # no plaintext port


def test_the_slot_map_prefers_the_online_master_and_keeps_online_replicas() -> None:
    failing_over = [
        [
            b"slots",
            [0, 100, 200, 300],
            b"nodes",
            [
                _node(b"master", b"online", port=7003),  # the promoted replica
                _node(b"master", b"failed", port=7000),  # the failed master, still listed
                _node(b"replica", b"loading", port=7004),
                _node(b"replica", b"online", port=7005),
            ],
        ]
    ]
    ((owner, replicas, ranges),) = parse_shards(failing_over, False, "h")
    assert owner == "10.0.0.1:7003"
    assert replicas == ("10.0.0.1:7005",)
    assert ranges == [(0, 100), (200, 300)]
    reordered = [[b"slots", [0, 1], b"nodes", failing_over[0][3][::-1]]]  # type: ignore[index]
    assert parse_shards(reordered, False, "h")[0][0] == "10.0.0.1:7003"
