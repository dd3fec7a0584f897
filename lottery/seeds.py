"""The one way to derive a seed: hash named parts, e.g. mix_seed("order", seed, epoch).

Hashing (rather than e.g. seed * 1000 + epoch) keeps distinct part tuples from colliding and keeps
every stream (data order, augmentation, ablations, reinitialisation) independent of the others.
"""
from __future__ import annotations

import hashlib


def mix_seed(*parts) -> int:
    """A 63-bit seed from parts (strings and integers)."""
    text = "/".join(part if isinstance(part, str) else str(int(part)) for part in parts)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
