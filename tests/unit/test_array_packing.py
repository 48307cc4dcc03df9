"""The decode stage's array container is safetensors (issue 15 item 7a): what the scoring actor unpacks is
what the decode task packed, for every dtype a detector's preprocessing gives, numpy or torch."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy
import torch

from adray.pipeline.decode import pack_arrays, unpack_arrays


def test_every_dtype_and_shape_survives_the_round_trip():
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.random((3, 8, 5), dtype=np.float32),
        "half": rng.random((2, 3)).astype(np.float16),
        "xyz": rng.random((4, 3)),
        "mask": rng.random((6,)) > 0.5,
        "index": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "none": np.zeros((0, 3), np.int32),
        "strided": np.arange(20, dtype=np.uint16).reshape(4, 5)[:, ::2],  # not contiguous
    }
    back = unpack_arrays(pack_arrays(arrays))
    assert sorted(back) == sorted(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k


def test_torch_tensors_are_packed_as_their_numpy_values():
    t = torch.linspace(0, 1, 12).reshape(3, 4)
    back = unpack_arrays(pack_arrays({"t": t, "g": t.requires_grad_(True) * 2}))
    assert back["t"].dtype == np.float32 and np.array_equal(back["t"], t.detach().numpy())
    assert np.allclose(back["g"], 2 * t.detach().numpy())


def test_the_blob_is_a_plain_safetensors_buffer_and_bad_dtypes_are_a_value_error():
    blob = pack_arrays({"a": np.ones((2, 2), np.float32)})
    assert np.array_equal(safetensors.numpy.load(blob)["a"], np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="cannot pack"):
        pack_arrays({"o": np.array([object()])})
