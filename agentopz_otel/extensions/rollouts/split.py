"""Percentage splits hashed exactly as flagd's `fractional` operator does, so an exported flag set gives
every targeting key the same version in flagd as here.

flagd (core/pkg/evaluator/fractional.go): the bucketing key is the flag key followed by the targeting
key, hashed with MurmurHash3 x86 32-bit, seed 0, over its UTF-8 bytes; bucket = (hash * total) >> 32;
the first variant whose running sum of weights exceeds the bucket wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import mmh3


def bucket(flag_key: str, targeting_key: str, total_weight: int) -> int:
    """The bucket, in [0, total_weight), of one targeting key for one flag."""
    return (mmh3.hash(flag_key + targeting_key, 0, signed=False) * total_weight) >> 32


def split_variant(flag_key: str, targeting_key: str, weighted: Sequence[tuple[str, int]]) -> str:
    """The variant `targeting_key` gets from (variant, weight) pairs, in flagd's order."""
    point = bucket(flag_key, targeting_key, sum(weight for _, weight in weighted))
    running = 0
    for variant, weight in weighted:
        running += weight
        if point < running:
            return variant
    raise ValueError("a split needs a positive total weight")
