"""Step-level (anchor-state) group advantages: pure NumPy, checked against hand-computed values."""
import numpy as np
import pytest

from pilotrl_jax.rl.step_groups import discounted_returns, step_group_advantages


def test_discounted_returns_sum_the_discounted_future():
    np.testing.assert_allclose(discounted_returns([0.0, 0.0, 1.0], 0.5), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(discounted_returns([0.5, 0.0, 0.5], 1.0), [1.0, 0.5, 0.5])
    assert discounted_returns([], 0.9).shape == (0,)
    with pytest.raises(ValueError, match="gamma=1.5"):
        discounted_returns([1.0], 1.5)


def test_turns_from_one_state_compare_their_returns_and_lone_states_get_nothing():
    keys = [["a", "b"], ["a", "c"], ["a", "b"]]
    rets = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    got = step_group_advantages(keys, rets, "std")
    # state a: returns 1, 3, 5 (mean 3, sample std 2); state b: 2, 6 (mean 4, std 2*sqrt 2); c alone
    np.testing.assert_allclose(got[0], [-1.0, -1 / np.sqrt(2)], rtol=1e-5)
    np.testing.assert_allclose(got[1], [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(got[2], [1.0, 1 / np.sqrt(2)], rtol=1e-5)
    got = step_group_advantages(keys, rets, "mean")
    np.testing.assert_allclose(np.concatenate(got), [-2.0, -2.0, 0.0, 0.0, 2.0, 2.0])
    # equal returns in a state: no credit (not a division by zero)
    np.testing.assert_array_equal(np.concatenate(step_group_advantages([["s"], ["s"]], [[0.5], [0.5]])), [0.0, 0.0])


def test_step_groups_refuse_ragged_or_unknown_input():
    with pytest.raises(ValueError, match="norm='z'"):
        step_group_advantages([["a"]], [[1.0]], "z")
    with pytest.raises(ValueError, match="2 key lists but 1 return lists"):
        step_group_advantages([["a"], ["b"]], [[1.0]])
    with pytest.raises(ValueError, match="episode 0: 2 anchor keys but 1 returns"):
        step_group_advantages([["a", "b"]], [[1.0]])


@pytest.mark.parametrize("norm", ["std", "mean"])
@pytest.mark.parametrize("value", [0.1 + 0.2, 0.9, -0.1, 0.95 ** 3 * 0.5])
def test_equal_returns_give_exactly_zero_in_large_groups(norm, value):
    """A state whose turns all earned the same return compares nothing: exactly 0, not a rounding residual."""
    n = 1000
    got = step_group_advantages([["s"]] * n, [[value]] * n, norm)
    assert np.array_equal(np.concatenate(got), np.zeros(n, np.float32))
