"""Split hashing equals flagd's `fractional`: published flagd vectors, an independent MurmurHash3, shares."""

from __future__ import annotations

import pytest

from agentopz_otel.extensions.rollouts.ofrep import split_weights
from agentopz_otel.extensions.rollouts.split import bucket, split_variant


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit written out from Austin Appleby's reference (smhasher MurmurHash3.cpp)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h = seed
    full = len(data) - len(data) % 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    tail = data[full:]
    if tail:
        k = int.from_bytes(tail, "little")
        h ^= rotl((k * c1) & mask, 15) * c2 & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def flagd_fractional(flag_key: str, targeting_key: str, weighted: list[tuple[str, int]]) -> str:
    """flagd's fractional.go distributeValue, restated over the independent hash."""
    total = sum(weight for _, weight in weighted)
    point = (murmur3_x86_32((flag_key + targeting_key).encode()) * total) >> 32
    running = 0
    for variant, weight in weighted:
        running += weight
        if point < running:
            return variant
    raise AssertionError


def test_independent_murmur3_matches_published_reference_values():
    # SMHasher's verification values for MurmurHash3_x86_32.
    assert murmur3_x86_32(b"") == 0
    assert murmur3_x86_32(b"", 1) == 0x514E28B7
    assert murmur3_x86_32(b"hello") == 0x248BFA47
    assert murmur3_x86_32(b"Hello, world!", 1234) == 0xFAF6CDB3
    assert murmur3_x86_32(b"The quick brown fox jumps over the lazy dog") == 0x2E4FF723


COLORS = [("red", 25), ("blue", 25), ("green", 25), ("yellow", 25)]


@pytest.mark.parametrize(
    ("flag_key", "targeting_key", "weighted", "variant"),
    [
        # flagd core/pkg/evaluator/fractional_test.go: bucketing key "headerColor" + email.
        ("headerColor", "rachel@faas.com", COLORS, "blue"),
        ("headerColor", "monica@faas.com", COLORS, "yellow"),
        ("headerColor", "joey@faas.com", COLORS, "red"),
        ("headerColor", "ross@faas.com", COLORS, "blue"),
        ("headerColor", "foo@foo.com", [("blue", 50), ("green", 50)], "green"),
    ],
)
def test_published_flagd_vectors(flag_key, targeting_key, weighted, variant):
    assert split_variant(flag_key, targeting_key, weighted) == variant
    assert flagd_fractional(flag_key, targeting_key, weighted) == variant


def test_equals_an_independent_implementation_for_many_keys_and_weights():
    keys = [f"conversation-{i}" for i in range(3000)] + ["ünïcødé-用户-🙂", "", "a", "ab", "abc", "abcd"]
    for weighted in ([("v2", 5), ("v1", 95)], [("v2", 50), ("v1", 50)], [("a", 1), ("b", 2), ("c", 3), ("d", 94)]):
        for key in keys:
            assert split_variant("support-bot", key, weighted) == flagd_fractional("support-bot", key, weighted), key


def test_five_percent_of_100000_keys_within_half_a_point():
    on_candidate = sum(bucket("support-bot", f"user-{i}", 100) < 5 for i in range(100_000))
    assert 4_500 <= on_candidate <= 5_500, on_candidate


def test_a_key_on_the_candidate_stays_on_it_as_the_rollout_widens():
    from agentopz_otel.extensions.rollouts.model import Rollout

    def on_candidate(weight: int) -> set[str]:
        rollout = Rollout(1, "bot", "v1", "v2", (5, 25, 50, 100), 0, weight, "progressing", 0, 0, 0)
        weighted = split_weights(rollout)
        return {key for key in (f"k{i}" for i in range(5000)) if split_variant("bot", key, weighted) == "v2"}

    at5, at25, at50, at100 = on_candidate(5), on_candidate(25), on_candidate(50), on_candidate(100)
    assert at5 < at25 < at50 < at100
    assert len(at100) == 5000
