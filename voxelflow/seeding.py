"""Deterministic random generators derived from (seed, stage, item id, copy index).

Every random draw in voxelflow comes from one of these, so parallel work, any worker order
and reruns give identical bytes.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *keys: object) -> int:
    """A 64-bit integer that depends only on ``seed`` and the ``keys``."""
    text = "\x1f".join([str(seed), *(str(key) for key in keys)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A numpy generator for one (stage, item, copy) key, e.g. ``rng_for(42, "augment", id, 3)``."""
    return np.random.default_rng(derive_seed(seed, *keys))


def unit_hash(*keys: object) -> float:
    """A number in [0, 1) that depends only on the keys (stable split assignment)."""
    return derive_seed(0, *keys) / 2.0**64
