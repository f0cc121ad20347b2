"""The one length-bucket rule (batches, cache windows, prefill chunks, SFT rows)."""
import numpy as np
import pytest

from pilotrl_jax.buckets import MIN_BUCKET, bucket_length


def test_pow2_buckets_with_floor_and_cap():
    assert [bucket_length(n) for n in (0, 1, 64, 65, 700)] == [MIN_BUCKET, MIN_BUCKET, 64, 128, 1024]
    assert [bucket_length(n, "pow2", 16) for n in (1, 16, 17, 300)] == [16, 16, 32, 512]
    assert bucket_length(300, "pow2", 16, 256) == 256 and bucket_length(3, "pow2", 6) == 6  # floor kept as given
    assert bucket_length(np.int64(100), "pow2", 1) == 128


def test_multiple_buckets_round_up_the_floored_length():
    assert [bucket_length(n, 128) for n in (1, 128, 129, 700)] == [128, 128, 256, 768]
    assert bucket_length(10, 48) == 96  # max(n, MIN_BUCKET=64) rounded up to a multiple of 48
    assert bucket_length(10, 48, 1) == 48


@pytest.mark.parametrize("n,bucket,match", [(-1, "pow2", "n=-1"), (2.5, "pow2", "n=2.5"), (True, "pow2", "n=True"),
                                            (5, "pow3", "bucket='pow3'"), (5, 0, "bucket=0"), (5, True, "bucket=True")])
def test_bad_input_is_named(n, bucket, match):
    with pytest.raises(ValueError, match=match):
        bucket_length(n, bucket)
