"""Every rule's CPU kernel against its float64 reference, on awkward sizes and random options."""

import re

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastopt.kernels import cpu, penalty
from fastopt.kernels.chunks import CHUNK_SIZE, chunk_table
from fastopt.kernels.cpu import for_size, serial_twin
from fastopt.kernels.rules import RULES

from kernel_cases import DTYPES, ELEMENTWISE, GRADIENT_UNITS, SIZES, make_case

#: Allowed error in units of the dtype's epsilon, on top of the data's own conditioning.
ULPS = 8
#: Allowed multiple of the data's conditioning. Larger for float64, where the float64
#: reference rounds as coarsely as the kernel, so the comparison sees both errors.
SENSITIVITY_FACTOR = {np.float32: 16, np.float64: 256}


def run_both(name, size, dtype, rng, n_groups):
    case, _ = make_case(name, size, dtype, rng, n_groups)
    before, expected = case.copy(), case.copy()
    cpu.rule_kernel(case.rule)(*case.arguments())
    case.rule.reference(*expected.arguments())
    sensitivity = conditioning(before, expected, dtype)
    assert_close(case.mutated(), expected.mutated(), before.mutated(), sensitivity, dtype)


def conditioning(before, expected, dtype):
    """How far the float64 result moves under perturbations the size of one rounding.

    Each input in turn moves by one ulp of the sum of magnitudes of all inputs of its units at that
    element: that is the size of the rounding error of any intermediate such as ``g - m``,
    however much it then cancels (``m + (1 - b1)(g - m)`` near zero). A kernel that rounds
    each operation once stays within a small multiple of this; a wrong formula does not.
    """
    eps = np.finfo(dtype).eps
    # A float64 reference cannot resolve a one-ulp nudge of float64 data: nudge 2**20 times
    # harder and scale the effect back down (the effects are linear at that size).
    magnify = 2.0**20 if dtype == np.float64 else 1.0
    inputs = {name: b.astype(np.float64) for name, b in before.mutated().items()}
    inputs["grad"] = before.grad.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = {
            units: sum(np.abs(v) for k, v in inputs.items() if (k in GRADIENT_UNITS) == units)
            for units in (True, False)
        }
    names = list(before.mutated())
    total = {name: np.zeros(before.param.size) for name in names}
    for moved_name in inputs:  # one input at a time: the first-order bound sums |effects|
        moved = dict(inputs)
        moved[moved_name] = inputs[moved_name] + magnify * eps * scale[moved_name in GRADIENT_UNITS]
        param = moved["param"].copy()
        state = np.array([moved[k] for k in names[1:]]).reshape(before.state.shape)
        before.rule.reference(param, state, moved["grad"], *before.arguments()[3:])
        for k, result in zip(names, [param, *state]):
            with np.errstate(invalid="ignore"):
                total[k] += np.nan_to_num(np.abs(result - expected.mutated()[k])) / magnify
    return total


def assert_close(actual, expected, before, sensitivity, dtype):
    """Each element within ``ULPS`` roundings of the float64 reference, plus a multiple of the
    reference's own movement under one-ulp input perturbations."""
    tol = ULPS * np.finfo(dtype).eps
    for name, a in actual.items():
        e, b, s = expected[name], before[name], sensitivity[name]
        assert a.dtype == e.dtype == dtype
        e64 = e.astype(np.float64)
        bound = tol * (np.abs(b) + np.abs(e64)) + SENSITIVITY_FACTOR[dtype] * s + np.finfo(dtype).tiny
        bad = ~(np.abs(a - e64) <= bound) & ~(np.isnan(a) & np.isnan(e))
        assert not bad.any(), (
            f"{name}: {bad.sum()} of {a.size} elements differ, first at {np.flatnonzero(bad)[:3]}: "
            f"{a[bad][:3]} vs {e[bad][:3]} (before {b[bad][:3]})"
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_kernel_matches_reference(name, size, dtype, rng):
    run_both(name, size, dtype, rng, n_groups=3 if size > 1 else 1)


@given(name=st.sampled_from(ELEMENTWISE), size=st.integers(0, 3 * CHUNK_SIZE + 5),
       n_groups=st.integers(1, 5), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_kernel_matches_reference_over_options(name, size, n_groups, dtype, seed):
    run_both(name, size, dtype, np.random.default_rng(seed), n_groups)


def assert_same_bits(case, other):
    for name, a in case.mutated().items():
        assert np.array_equal(a, other.mutated()[name], equal_nan=True), name


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_chunks_of_group_minus_one_are_left_alone(name, rng):
    """A chunk of group -1 (parameters that skip a step) keeps its parameters and state, bit for
    bit; every other element is what the unmasked step gives."""
    size = 3 * CHUNK_SIZE + 7
    case, _ = make_case(name, size, np.float32, rng, n_groups=2)
    lo, hi = CHUNK_SIZE - 5, 2 * CHUNK_SIZE + 3  # a skipped stretch across chunk boundaries
    whole, original = case.copy(), case.copy()
    case.bounds, case.groups = chunk_table([(0, lo, 0), (lo, hi, -1), (hi, size, 1)])
    whole.bounds, whole.groups = chunk_table([(0, lo, 0), (lo, hi, 0), (hi, size, 1)])
    cpu.rule_kernel(case.rule)(*case.arguments())
    cpu.rule_kernel(case.rule)(*whole.arguments())
    for buffer, values in case.mutated().items():
        assert np.array_equal(values[lo:hi], original.mutated()[buffer][lo:hi], equal_nan=True), buffer
        outside = np.r_[0:lo, hi:size]
        assert np.array_equal(values[outside], whole.mutated()[buffer][outside], equal_nan=True), buffer


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_serial_build_computes_the_same_bits(name, rng):
    """The single-threaded build (used up to one chunk of parameters) against the parallel
    kernel, over several chunks and two groups."""
    case, _ = make_case(name, 5 * CHUNK_SIZE + 3, np.float32, rng, n_groups=2)
    serial = case.copy()
    cpu.rule_kernel(case.rule, parallel=False)(*serial.arguments())
    cpu.rule_kernel(case.rule)(*case.arguments())
    assert_same_bits(case, serial)


def test_the_serial_build_serves_up_to_one_chunk():
    rule = RULES["adam_step"]
    parallel, serial = cpu.rule_kernel(rule), cpu.rule_kernel(rule, parallel=False)
    assert serial is not parallel and serial is cpu.rule_kernel(rule, parallel=False)
    assert not serial.targetoptions.get("parallel") and parallel.targetoptions["parallel"]
    # each build has its own on-disk cache entries, named after the rule and the sources' digest
    assert serial.py_func.__qualname__.startswith("adam_step_serial_")
    assert parallel.py_func.__qualname__ == f"adam_step_{cpu._source_digest()}"
    assert cpu.rule_kernel_for_size(rule, 0) is serial and cpu.rule_kernel_for_size(rule, CHUNK_SIZE) is serial
    assert cpu.rule_kernel_for_size(rule, CHUNK_SIZE + 1) is parallel
    kernel = penalty.l2_penalty
    assert for_size(kernel, CHUNK_SIZE) is serial_twin(kernel) and for_size(kernel, CHUNK_SIZE + 1) is kernel


def test_a_changed_rule_source_gets_a_new_cache_entry(tmp_path, monkeypatch):
    """Every cached kernel's name carries a digest of every kernel source, so Numba's on-disk
    cache (keyed by the kernel's own file and bytecode, not by what it calls) cannot serve a
    kernel built from an older rule, primitive or Philox."""
    from fastopt.kernels import dropout, roofline

    before = cpu._source_digest()
    cached = [cpu.rule_kernel(RULES["adam_step"]), cpu.rule_kernel(RULES["adam_step"], parallel=False),
              penalty.l2_penalty, serial_twin(penalty.l2_penalty), dropout.dropout_step,
              serial_twin(dropout.dropout_step), roofline.scale_in_place]
    assert all(kernel.py_func.__name__.endswith("_" + before) for kernel in cached)
    cpu._source_digest.cache_clear()
    try:
        original = cpu.Path.read_bytes
        monkeypatch.setattr(cpu.Path, "read_bytes",
                            lambda path: original(path) + (b"# changed" if path.name == "adam.py" else b""))
        assert cpu._source_digest() != before
    finally:
        monkeypatch.undo()
        cpu._source_digest.cache_clear()
    assert cpu._source_digest() == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_serial_l2_penalty_computes_the_same_bits(dtype, rng):
    size = 5 * CHUNK_SIZE + 3
    param = (rng.standard_normal(size) * 3).astype(dtype)
    bounds, groups = chunk_table([(0, size // 3, 0), (size // 3, size, 1)])
    table = np.array([[1.0, 0.1], [1.0, 2.5]])
    assert serial_twin(penalty.l2_penalty)(param, bounds, groups, table, 1) == penalty.l2_penalty(
        param, bounds, groups, table, 1)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_nan_and_inf_in_the_gradient_reach_the_parameters(name, rng):
    case, _ = make_case(name, 64, np.float32, rng)
    case.grad[3] = np.nan
    case.grad[5] = np.inf
    cpu.rule_kernel(case.rule)(*case.arguments())
    param = case.param
    assert np.isnan(param[3])
    if name == "lion_step":
        # The sign of an infinite momentum is finite: the inf reaches the momentum, and the
        # parameter on the next step (inf - inf in the momentum's update is NaN).
        assert not np.isfinite(case.state[0, 5])
    else:
        assert not np.isfinite(param[5])
    assert np.isfinite(np.delete(param, [3, 5])).all()


def _host_has_avx2_fma():
    import platform

    from llvmlite import binding

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    features = binding.get_host_cpu_features()
    return bool(features.get("avx2")) and bool(features.get("fma"))


needs_avx2_fma = pytest.mark.skipif(not _host_has_avx2_fma(),
                                    reason="reads x86 AVX2/FMA assembly")


_assembly = {}


def float32_assembly(name, rng, parallel):
    """The kernel's x86 assembly for float32 buffers, compiled afresh (a kernel loaded from
    the on-disk cache cannot be inspected), as the parallel kernel or its serial build."""
    if (name, parallel) not in _assembly:
        case, _ = make_case(name, 16, np.float32, rng)
        kernel = cpu.rule_kernel(case.rule, parallel)
        options = {**kernel.targetoptions, "cache": False}
        options.pop("nopython", None)
        fresh = numba.njit(**options)(kernel.py_func)
        fresh(*case.arguments())
        _assembly[name, parallel] = fresh.inspect_asm(tuple(numba.typeof(a) for a in case.arguments()))
    return _assembly[name, parallel]


both_builds = pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])


#: The float64 operations besides multiplication each rule's prologue makes, per chunk.
PROLOGUE_OPS = {"adam": {"vdivsd", "vsubsd"}, "adamw": {"vdivsd", "vsubsd"}, "adamax": {"vdivsd"},
                "adagrad": {"vdivsd"}, "radamw": {"vsubsd"}, "nadam": {"vdivsd"}, "nadamw": {"vdivsd", "vsubsd"}}
#: How many float64 operations a prologue makes at most (NAdamW: lr_k, two coefficients of two
#: operations each, and 1 - lr_k * lambda).
PROLOGUE_COUNT = {"nadamw": 7}


@needs_avx2_fma
@both_builds
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_float32_kernels_do_no_float64_arithmetic(name, parallel, rng):
    asm = float32_assembly(name, rng, parallel)
    double_ops = re.findall(r"\bv?(?:add|sub|mul|div|sqrt|fmadd\w*|cvtss2)(?:sd|pd)\b", asm)
    # Once per chunk, outside the element loop (a handful, none packed): each group's lr *
    # lr_factor, and Adam's step size lr_k / (1 - beta1**t) (Adamax's, Adagrad's lr_k /
    # divisor, NAdam's two coefficients) and AdamW's (RAdam's, NAdamW's) 1 - lr_k * lambda, in
    # float64 as the host would, each rounded once to float32.
    rule = name.split("_")[0]
    allowed = {"vmulsd"} | PROLOGUE_OPS.get(rule, set())
    assert set(double_ops) <= allowed and len(double_ops) <= PROLOGUE_COUNT.get(rule, 6), double_ops
    assert re.search(r"\bvfmadd\w*ps\b|\bvfmadd\w*ss\b", asm), "expected single-precision FMAs"


@needs_avx2_fma
@both_builds
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_inner_loop_is_vectorised(name, parallel, rng):
    asm = float32_assembly(name, rng, parallel)
    assert re.search(r"\bvfmadd\w*ps\s.*%[yz]mm", asm), "no packed FMA: the loop did not vectorise"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_l2_penalty_matches_reference(size, dtype, rng):
    param = (rng.standard_normal(size) * 3).astype(dtype)
    edges = sorted(rng.integers(0, size + 1, 2).tolist())
    bounds, groups = chunk_table([(0, edges[0], 0), (edges[0], edges[1], 1), (edges[1], size, 2)])
    table = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 2.5]])
    expected = penalty.l2_penalty_reference(param, bounds, groups, table, 1)
    assert penalty.l2_penalty(param, bounds, groups, table, 1) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_l2_penalty_propagates_nan():
    param = np.ones(100, np.float32)
    param[50] = np.nan
    bounds, groups = chunk_table([(0, 100, 0)])
    assert np.isnan(penalty.l2_penalty(param, bounds, groups, np.ones((1, 2)), 1))


class TestChunkTable:
    def test_merges_neighbours_and_splits_long_runs(self):
        bounds, groups = chunk_table([(0, 3, 0), (3, 10, 0), (10, 30, 1), (30, 30, 2)], chunk_size=8)
        assert bounds.tolist() == [0, 8, 10, 18, 26, 30]
        assert groups.tolist() == [0, 0, 1, 1, 1]
        assert bounds.dtype == np.uint64 and groups.dtype == np.int64

    def test_empty_buffer_has_no_chunks(self):
        bounds, groups = chunk_table([(0, 0, 0)])
        assert bounds.tolist() == [0] and groups.size == 0

    @pytest.mark.parametrize("segments", [[(1, 3, 0)], [(0, 3, 0), (4, 5, 1)], [(0, 3, 0), (3, 2, 1)]])
    def test_refuses_gaps_and_reversed_ranges(self, segments):
        with pytest.raises(ValueError, match="consecutive"):
            chunk_table(segments)

    def test_refuses_a_chunk_size_below_one(self):
        with pytest.raises(ValueError, match="chunk_size"):
            chunk_table([(0, 3, 0)], chunk_size=0)


def test_the_simulators_fma_rounds_as_the_cpus():
    """primitives.fma, which the CUDA simulator runs, against llvm.fma on the CPU: special
    values (overflow, inf, NaN, signed zeros, subnormals) and random float32 and float64."""
    import itertools
    import math

    from fastopt.kernels import primitives

    compiled = numba.njit(lambda a, b, c: cpu.fma(a, b, c))
    specials = (0.0, -0.0, 1.0, -1.0, 2.5, 3e38, -3e38, 1e20, 1e-40, 1e154, -1e154, 1e308, -1e308,
                1.7976931348623157e308, 3e-308, 1e-320, math.inf, -math.inf, math.nan)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        with np.errstate(all="ignore"):
            values = [dtype(v) for v in specials]
            cases = list(itertools.product(values, repeat=3))
            cases += [tuple(dtype(v) for v in rng.standard_normal(3) * 10.0 ** rng.integers(-30, 30, 3))
                      for _ in range(3000)]
            for a, b, c in cases:
                ours, cpus = primitives.fma(a, b, c), compiled(a, b, c)
                assert type(ours) is dtype
                assert (np.isnan(ours) and np.isnan(cpus)) or (ours == cpus and np.signbit(ours) == np.signbit(cpus)), \
                    (a, b, c, ours, cpus)


def test_centered_rmsprop_takes_a_variance_rounded_below_zero_as_zero():
    """alpha = 0: the variance v - avg**2 is g**2 - g**2, which the fma leaves as minus the
    rounding error of g**2, negative for about half the elements; taken as 0, not sqrt < 0."""
    rule = RULES["rmsprop_centered_step"]
    size = 4096
    g = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    param, state = np.ones(size, np.float32), np.zeros((2, size), np.float32)
    bounds, groups = chunk_table([(0, size, 0)])
    scalars = (1e-3, 1.0, 0.0, 1.0, 1e-8, 0.0)  # lr, grad_sign, alpha, 1 - alpha, eps, momentum
    cpu.rule_kernel(rule)(param, state, g, bounds, groups, np.array([[1.0, 0.0]]), scalars)
    from fastopt.kernels.primitives import fma

    negative = [fma(-a, a, v) < 0 for a, v in zip(state[1][:200], state[0][:200])]
    assert any(negative)  # the data does reach the clamp
    assert np.isfinite(param).all()


@pytest.mark.parametrize("name", ["adam_amsgrad_step", "adamw_amsgrad_step"])
def test_amsgrad_running_maximum_keeps_a_nan(name, rng):
    """torch.maximum propagates NaN: once a NaN reaches the second moment, the running maximum
    holds it, whatever comes after."""
    case, _ = make_case(name, 64, np.float32, rng)
    case.grad[3] = np.nan
    kernel = cpu.rule_kernel(case.rule)
    kernel(*case.arguments())
    case.grad[3] = 1.0
    kernel(*case.arguments())
    assert np.isnan(case.state[2][3]) and np.isfinite(np.delete(case.state[2], 3)).all()
