"""Set operations on selections."""

from __future__ import annotations

import numpy as np
import pytest

from engine.curation.sets import combine
from engine.errors import InvalidConfigError


def test_combine():
    a = np.array([5, 1, 3, 3])
    b = np.array([3, 4, 9])
    np.testing.assert_array_equal(combine(a, b, "union"), [1, 3, 4, 5, 9])
    np.testing.assert_array_equal(combine(a, b, "intersection"), [3])
    np.testing.assert_array_equal(combine(a, b, "difference"), [1, 5])
    assert combine(a, b, "union").dtype == np.int64
    assert combine([], [], "union").dtype == np.int64
    with pytest.raises(InvalidConfigError, match="op must be"):
        combine(a, b, "xor")
