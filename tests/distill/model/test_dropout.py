"""The model's dropout (`distill.model.bert.Dropout`): 8-bit keep masks, the expectation unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.model.bert import DROPOUT_LEVELS, Dropout, keep_mask


@pytest.mark.parametrize("shape", [(3, 7, 37), (1, 5), (1000, 1001)])
def test_keep_mask_keeps_the_quantised_share(shape):
    mask, keep = keep_mask(jax.random.key(3), shape, 0.1)
    assert mask.shape == shape and mask.dtype == jnp.bool_
    assert keep == 230 / DROPOUT_LEVELS  # round(0.9 * 256)
    if np.prod(shape) > 10**5:
        assert abs(float(mask.mean()) - keep) < 2e-3
        # the four masks cut from one 32-bit word are independent: neighbours agree as chance says
        flat = np.asarray(mask).reshape(-1)[: 4 * (mask.size // 4)].reshape(-1, 4)
        both = (flat[:, 0] & flat[:, 1]).mean()
        assert abs(both - keep**2) < 3e-3


def test_dropout_scales_kept_values_and_keeps_the_mean():
    x = jnp.full((500, 401), 2.0)
    layer = Dropout(0.1)
    y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    values = np.unique(np.asarray(y))
    np.testing.assert_allclose(values, [0.0, 2.0 * DROPOUT_LEVELS / 230], rtol=1e-6)
    assert abs(float(y.mean()) - 2.0) < 0.01  # unbiased: the scale is the keep probability actually used
    again = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.array_equal(np.asarray(y), np.asarray(again))


def test_dropout_off_paths():
    x = jnp.arange(12.0).reshape(3, 4)
    key = {"dropout": jax.random.key(0)}
    assert Dropout(0.1).apply({}, x, deterministic=True) is x
    assert Dropout(0.001).apply({}, x, deterministic=False, rngs=key) is x  # rounds to no dropout
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, deterministic=False, rngs=key), np.zeros((3, 4)))
    y = Dropout(0.5).apply({}, x.astype(jnp.bfloat16), deterministic=False, rngs=key)
    assert y.dtype == jnp.bfloat16
