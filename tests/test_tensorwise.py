"""Rules with per-tensor sums (LAMB): the CPU kernel against the float64 reference over
awkward tensor sizes, its builds and thread counts, and the summation order both targets share
(kernels/tensorwise.py). CPU == CUDA for these kernels: tests/cuda_kernel_check.py and
tests/cuda_facade_check.py under the simulator; their PTX: tests/test_cuda_ptx.py."""

import dataclasses
import functools

import numpy as np
import pytest

from fastopt.kernels import cpu, tensorwise
from fastopt.kernels.chunks import TENSOR_TILE
from fastopt.kernels.rules import RULES
from kernel_cases import DTYPES, TENSORWISE, Case, make_tensor_case
from test_kernels import assert_close, conditioning

#: Tensors of no, one, a few, exactly one tile, one more than a tile, and several tiles.
SIZES = [0, 1, 7, TENSOR_TILE, TENSOR_TILE + 1, 3 * TENSOR_TILE + 300, 5]


@pytest.mark.parametrize("name", TENSORWISE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("skipped", [(), (3, 5)], ids=["all", "two-skip"])
def test_kernel_matches_the_float64_reference(name, dtype, skipped, rng):
    """As every element-wise kernel (test_kernels.py): within a few roundings of the float64
    reference plus the data's own conditioning, which here includes each tensor's norms."""
    case, _ = make_tensor_case(name, SIZES, dtype, rng, skipped)
    rule = dataclasses.replace(case.rule, reference=functools.partial(case.rule.reference, tensors=case.tile_tensor))
    plain = Case(rule, case.param, case.state, case.grad, case.bounds, case.groups, case.table, case.scalars)
    before, expected = plain.copy(), plain.copy()
    tensorwise.kernel(case.rule)(*case.arguments())
    rule.reference(*expected.arguments())
    assert_close(plain.mutated(), expected.mutated(), before.mutated(), conditioning(before, expected, dtype), dtype)
    edges = np.cumsum([0, *SIZES])
    for k in skipped:  # left alone, state included
        untouched = slice(edges[k], edges[k + 1])
        assert np.array_equal(case.param[untouched], before.param[untouched])
        assert np.array_equal(case.state[:, untouched], before.state[:, untouched])


@pytest.mark.parametrize("name", TENSORWISE)
def test_serial_and_parallel_builds_give_the_same_bits(name, rng):
    case, _ = make_tensor_case(name, SIZES * 3, np.float32, rng, (4,))
    serial = case.copy()
    tensorwise.kernel(case.rule)(*case.arguments())
    tensorwise.kernel(case.rule, parallel=False)(*serial.arguments())
    for buffer, ours in case.mutated().items():
        assert np.array_equal(ours, serial.mutated()[buffer], equal_nan=True), buffer


def block_sum_of_squares(values):
    """NumPy emulation of a CUDA block of LANES threads summing ``values**2`` in float64: lane
    j adds elements j, j + LANES, ... in order, then the tree (lane j takes lane j + h)."""
    lanes = np.zeros(tensorwise.LANES)
    for base in range(0, values.size, tensorwise.LANES):
        chunk = values[base:base + tensorwise.LANES]
        lanes[:chunk.size] += chunk * chunk
    half = tensorwise.LANES // 2
    while half:
        lanes[:half] += lanes[half:2 * half]
        half //= 2
    return lanes[0]


def test_the_sums_take_the_order_of_a_cuda_block(rng):
    """Each tile's sums equal a NumPy emulation of a block of LANES threads: lane j adds
    elements j, j + LANES, ... in order, then the tree (lane j takes lane j + h), bit for bit."""
    case, _ = make_tensor_case("lamb_step", [3 * TENSOR_TILE + 300, 1000], np.float64, rng)
    param = case.param.copy()
    tensorwise.kernel(case.rule)(*case.arguments())
    for t in range(case.groups.size):
        assert case.partial[t, 0] == block_sum_of_squares(param[int(case.bounds[t]):int(case.bounds[t + 1])])
    for k in range(case.tensor_tiles.size - 1):
        total = 0.0
        for t in range(case.tensor_tiles[k], case.tensor_tiles[k + 1]):
            total += case.partial[t, 0]
        assert case.sums[k, 0] == total


def test_the_direction_sums_take_the_same_order(rng):
    """The u**2 sums too, with u = (m / c1) / (sqrt(v / c2) + eps) computed again in NumPy from
    the stored state (no weight decay: the fma that adds it is then exact)."""
    case, _ = make_tensor_case("lamb_step", [3 * TENSOR_TILE + 300, 1000], np.float64, rng)
    case.table[:, 1] = 0.0
    tensorwise.kernel(case.rule)(*case.arguments())
    m, v = case.state
    eps, correction1, correction2 = case.scalars[5], case.scalars[6], case.scalars[7]
    u = (m * (1.0 / correction1)) / (np.sqrt(v * (1.0 / correction2)) + eps)
    for t in range(case.groups.size):
        assert case.partial[t, 1] == block_sum_of_squares(u[int(case.bounds[t]):int(case.bounds[t + 1])])


def test_a_step_size_beyond_float32_is_taken_in_float64(rng):
    """A tensor whose gradient stopped: its moments decay to subnormals while its norm does
    not, and lr * ||theta|| / ||u|| passes float32's range. That tile steps in float64 (the
    step is lr * ||theta|| long), as the reference does, not by an inf that wipes it out."""
    case, _ = make_tensor_case("lamb_step", [1000, 50], np.float32, rng)
    case.table[:, 1] = 0.0
    case.grad[:] = 0.0
    case.state[0, :1000] = rng.choice([-1.0, 1.0], 1000) * np.float32(1e-42)  # subnormal momentum
    case.state[1, :1000] = np.float32(1e-40)
    # lr 0.05, no sign flip, beta1 0.9, beta2 0.999, eps 1, no bias correction: u is m's size
    case.scalars = (0.05, 1.0, 0.1, 0.999, 0.001, 1.0, 1.0, 1.0)
    before, expected = case.copy(), case.copy()
    tensorwise.kernel(case.rule)(*case.arguments())
    case.rule.reference(expected.param, expected.state, expected.grad, expected.bounds, expected.groups,
                        expected.table, expected.scalars, expected.tile_tensor)
    assert case.sums[0, 1] > 0 and case.scalars[0] * np.sqrt(case.sums[0, 0] / case.sums[0, 1]) > 3.5e38
    assert np.all(np.isfinite(case.param)) and not np.array_equal(case.param[:1000], before.param[:1000])
    np.testing.assert_allclose(case.param, expected.param, rtol=1e-5)


def test_an_elementwise_kernel_is_refused_for_a_tensorwise_rule():
    with pytest.raises(ValueError, match="sums over tensors"):
        cpu.rule_kernel(RULES["lamb_step"])
