"""FNV-1a 64 at C speed agrees with its definition (SPEC §9), on every kind of buffer."""

from __future__ import annotations

import numpy as np
import pytest

from ggml_rpc_spec.protocol.hashing import fnv1a64, fnv1a64_reference


def test_known_vectors():
    # FNV-1a 64 test vectors (Fowler/Noll/Vo): "" -> the offset basis, "a", "foobar"
    assert fnv1a64(b"") == fnv1a64_reference(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == fnv1a64_reference(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == fnv1a64_reference(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize("size", [1, 7, 8, 4096, 100_003])
def test_fast_hash_equals_the_definition(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    expected = fnv1a64_reference(data.tobytes())
    for buffer in (data.tobytes(), bytearray(data.tobytes()), memoryview(data), data):
        assert fnv1a64(buffer) == expected
