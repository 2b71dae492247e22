"""The task's cross-entropy (ftjax.objectives.cross_entropy) against optax's: the same losses,
gradients and second-order gradients, and accuracy that counts exactly what argmax does, ties
included (a zero-initialized head's equal logits)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from ftjax.objectives.cross_entropy import integer_cross_entropy, weighted_cross_entropy


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(3, 7, 13)).astype(np.float32) * 4)
    labels = jnp.asarray(rng.integers(0, 13, size=(3, 7)))
    weights = jnp.asarray(rng.random(size=(3, 7)).astype(np.float32))
    return logits, labels, weights


def reference(logits, labels, weights):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights


def test_losses_and_accuracy_match_optax_and_argmax(case):
    logits, labels, weights = case
    losses, correct = weighted_cross_entropy(logits, labels, weights)
    np.testing.assert_allclose(losses, reference(*case), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(correct, (jnp.argmax(logits, -1) == labels) * weights)


def test_gradients_match_optax_to_second_order(case):
    logits, labels, weights = case

    def ours(x):
        return jnp.sum(weighted_cross_entropy(x, labels, weights)[0])

    def theirs(x):
        return jnp.sum(reference(x, labels, weights))

    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(theirs)(logits), atol=1e-6)
    second = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(jax.grad(f)(x))))  # noqa: E731
    np.testing.assert_allclose(second(ours)(logits), second(theirs)(logits), atol=1e-5)


def test_the_written_out_gradient_passes_check_grads(case):
    logits, labels, weights = case
    check_grads(lambda x: integer_cross_entropy(x, labels)[0] * weights, (logits,), order=2,
                modes=["rev"], eps=1e-2)


def test_ties_count_as_argmax_does():
    equal = jnp.zeros((3, 5))  # argmax of equal logits is class 0
    _, correct = integer_cross_entropy(equal, jnp.array([0, 2, 4]))
    np.testing.assert_array_equal(correct, [1.0, 0.0, 0.0])
    tied = jnp.array([[1.0, 3.0, 3.0, 0.0]])
    assert [float(integer_cross_entropy(tied, jnp.array([k]))[1][0]) for k in range(4)] == \
        [0.0, 1.0, 0.0, 0.0]


def test_bf16_logits_give_float32_losses_and_bf16_gradients(case):
    logits, labels, _ = case
    low = logits.astype(jnp.bfloat16)
    losses, _ = integer_cross_entropy(low, labels)
    assert losses.dtype == jnp.float32
    grad = jax.grad(lambda x: jnp.sum(integer_cross_entropy(x, labels)[0]))(low)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(losses, optax.softmax_cross_entropy_with_integer_labels(
        low.astype(jnp.float32), labels), rtol=1e-6, atol=1e-6)
