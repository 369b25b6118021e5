"""The calibration batch stream: order, exact count, last partial batch, dtype/shape/contiguity."""
import numpy as np
import pytest

from quantization.tensorrt.calib import CalibrationStream


def images(n):
    # Fortran-ordered float64 on purpose: the stream must hand TensorRT C-contiguous float32
    x = np.asfortranarray(np.arange(n * 3 * 4 * 4, dtype=np.float64).reshape(n, 3, 4, 4))
    return x


def test_exact_split_order_and_count():
    x = images(8)
    s = CalibrationStream(x, 4)
    batches = list(s)
    assert len(batches) == s.num_batches == len(s) == 2 and s.padded == 0 and s.dropped == 0
    for b in batches:
        assert b.shape == (4, 3, 4, 4) == s.batch_shape and b.dtype == np.float32 and b.flags.c_contiguous
    np.testing.assert_array_equal(np.concatenate(batches), x.astype(np.float32))
    assert s.batch_nbytes == 4 * 3 * 4 * 4 * 4


def test_partial_batch_padded_by_wrapping_around():
    x = images(10)
    s = CalibrationStream(x, 4, "pad")
    batches = list(s)
    assert s.num_batches == 3 and s.padded == 2 and s.dropped == 0
    assert all(b.shape[0] == 4 for b in batches)  # TensorRT needs a fixed batch
    idx = np.concatenate(s.indices())
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    np.testing.assert_array_equal(batches[-1], x[[8, 9, 0, 1]].astype(np.float32))
    assert set(idx) == set(range(10))  # every sample is used


def test_partial_batch_dropped():
    s = CalibrationStream(images(10), 4, "drop")
    assert s.num_batches == 2 and s.dropped == 2 and s.padded == 0
    assert np.concatenate(s.indices()).tolist() == list(range(8))


def test_batch_larger_than_set_is_lowered():
    s = CalibrationStream(images(3), 32)
    assert s.batch_size == 3 and s.num_batches == 1 and s.padded == 0
    assert next(iter(s)).shape == (3, 3, 4, 4)


def test_token_ids_stay_int64():
    ids = np.arange(5 * 16, dtype=np.int32).reshape(5, 16)
    s = CalibrationStream(ids, 2)
    out = list(s)
    assert len(out) == 3 and all(b.dtype == np.int64 and b.shape == (2, 16) and b.flags.c_contiguous for b in out)
    assert s.batch_nbytes == 2 * 16 * 8


def test_restartable_and_describe():
    s = CalibrationStream(images(6), 4)
    assert [b.tobytes() for b in s] == [b.tobytes() for b in s]
    assert s.describe() == {"calib_batch": 4, "calib_batches": 2, "calib_padded": 2, "calib_dropped": 0,
                            "calib_partial": "pad"}


@pytest.mark.parametrize("kwargs", [dict(requested_batch=0), dict(requested_batch=4, partial="repeat")])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CalibrationStream(images(4), **kwargs)


def test_empty_set():
    with pytest.raises(ValueError):
        CalibrationStream(np.zeros((0, 3, 4, 4), np.float32), 4)


def test_check_calibration_fed_count_error_and_cache():
    from types import SimpleNamespace as NS

    from quantization.tensorrt.calib import CalibrationError, check_calibration

    s = CalibrationStream(images(10), 4)  # 3 batches
    check_calibration(NS(fed=3, error=None, cache_served=False), s)
    check_calibration(NS(fed=0, error=None, cache_served=True), s)  # scales from the calibration cache
    check_calibration(NS(fed=3, expected=3, error=None, cache_served=False))
    with pytest.raises(CalibrationError, match="on 2 of 3 calibration batches"):
        check_calibration(NS(fed=2, error=None, cache_served=False), s)
    with pytest.raises(CalibrationError, match="ValueError: bad batch") as e:
        check_calibration(NS(fed=3, error=ValueError("bad batch"), cache_served=False), s)
    assert isinstance(e.value.__cause__, ValueError)
