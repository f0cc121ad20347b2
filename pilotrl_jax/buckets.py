"""Length buckets: the one rule that pads a batch, a cache window or a chunk to a few static sizes, so
jitted functions compile a handful of times per run instead of once per length."""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

MIN_BUCKET = 64  # the shortest padded training row


def bucket_length(n: int, bucket: Union[str, int] = "pow2", min_len: int = MIN_BUCKET, max_len: Optional[int] = None) -> int:
    """Padded size for `n` items: the next power of two ("pow2", at least `min_len`) or the next multiple
    of an int k (of max(n, min_len)); capped at `max_len` when given."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n={n!r}; expected a non-negative int (e.g. the longest episode's token count)")
    if bucket == "pow2":
        b = max(int(min_len), 1 << max(0, math.ceil(math.log2(max(int(n), 1)))))
    elif isinstance(bucket, (int, np.integer)) and not isinstance(bucket, bool) and bucket >= 1:
        b = int(bucket) * math.ceil(max(int(n), 1, int(min_len)) / int(bucket))
    else:
        raise ValueError(f"bucket={bucket!r}; expected 'pow2' or a positive int k (pad to a multiple of k, e.g. 128)")
    return b if max_len is None else min(b, int(max_len))
