"""Adafactor: the factored kernel against its float64 reference, fastopt.Adafactor and
fastopt.torch.Adafactor against torch.optim.Adafactor itself, state dicts, and what they refuse."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt.torch as fastopt_torch
from fastopt import Adafactor, FlatParams, ParamGroup
from fastopt.kernels import factored
from kernel_cases import FACTORED, make_factored_case

#: A matrix, a vector longer than a row of the kernel, a batch of matrices, a scalar, an empty
#: tensor, a column, and a vector of one.
SHAPES = [(7, 5), (3000,), (2, 3, 70), (), (0, 4), (3, 1), (1,)]
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def run_kernel(case, parallel=True):
    launch = factored.CpuLaunch(case.rule, case.param.size, case.param.dtype, case.tensors())
    if not parallel:
        launch._kernel = factored.kernel(case.rule, parallel=False)
    launch(*case.arguments())


def check_against_reference(case, skipped=()):
    expected = case.copy()
    tensor_groups = [case.groups[case.tensor_tiles[k]] for k in range(case.tensor_tiles.size - 1)]
    groups, k = [], 0
    for shape in case.shapes:  # the reference takes every tensor's group, empty ones too (-1)
        if np.prod(shape, dtype=int) == 0:
            groups.append(-1)
        else:
            groups.append(tensor_groups[k])
            k += 1
    before = case.copy()
    case.rule.reference(expected.param, expected.grad, expected.factors, case.shapes, groups, case.table, case.scalars)
    run_kernel(case)
    tolerance = 1e-12 if case.param.dtype == np.float64 else 2e-5
    moved = np.abs(expected.param.astype(np.float64) - before.param)
    scale = moved.max(initial=0) + np.abs(before.param)
    assert np.all(np.abs(case.param - expected.param.astype(np.float64)) <= tolerance * scale)
    factor_scale = np.abs(before.factors).astype(np.float64) + np.abs(expected.factors)
    assert np.all(np.abs(case.factors - expected.factors.astype(np.float64)) <= tolerance * factor_scale)
    for k in skipped:
        for name, (lo, hi) in case.layout.slices[k].items():
            np.testing.assert_array_equal(case.factors[lo:hi], before.factors[lo:hi])
    return before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", FACTORED)
@pytest.mark.parametrize("seed", range(3))
def test_kernel_matches_reference(name, dtype, seed):
    case, segments = make_factored_case(name, SHAPES, dtype, np.random.default_rng(seed), skipped=(2,))
    before = check_against_reference(case, skipped=(2,))
    start, stop, _ = segments[2]
    np.testing.assert_array_equal(case.param[start:stop], before.param[start:stop])


@settings(max_examples=30, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple), min_size=1, max_size=5),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_kernel_matches_reference_on_any_shapes(shapes, seed, dtype):
    case, _ = make_factored_case("adafactor_step", shapes, dtype, np.random.default_rng(seed))
    check_against_reference(case)


def test_serial_build_is_the_same_bits():
    case, _ = make_factored_case("adafactor_step", [(300, 70), (40000,), (3, 40, 9)], np.float32,
                                 np.random.default_rng(4))
    serial = case.copy()
    run_kernel(case)
    run_kernel(serial, parallel=False)
    np.testing.assert_array_equal(case.param, serial.param)
    np.testing.assert_array_equal(case.factors, serial.factors)


def _torch_run(dtype, options, groups=None, steps=300, seed=0):
    """fastopt.Adafactor and torch.optim.Adafactor side by side over SHAPES' non-empty tensors."""
    rng = np.random.default_rng(seed)
    shapes = {f"t{k}": shape for k, shape in enumerate(SHAPES) if np.prod(shape, dtype=int)}  # torch: no empties
    init = {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}
    params = FlatParams.from_arrays(init, dtype=dtype)
    ours = Adafactor(params, **options, groups=[ParamGroup(**g) for g in groups or []])
    theirs = {name: torch.nn.Parameter(torch.tensor(value)) for name, value in init.items()}
    torch_groups = [{"params": [theirs[n] for n in shapes if not any(n in g["params"] for g in groups or [])]}]
    for group in groups or []:
        extra = {}
        if "lr_factor" in group:
            extra["lr"] = options["lr"] * group["lr_factor"]
        if group.get("weight_decay") is not None:
            extra["weight_decay"] = group["weight_decay"]
        torch_groups.append({"params": [theirs[n] for n in group["params"]], **extra})
    reference = torch.optim.Adafactor(torch_groups, **options)
    for _ in range(steps):
        for name, shape in shapes.items():
            grad = rng.standard_normal(shape).astype(dtype)
            params.grad_of(name)[...] = grad
            theirs[name].grad = torch.tensor(grad)
        ours.step()
        reference.step()
    return params, ours, theirs, reference


OPTIONS = [dict(lr=1e-2), dict(lr=0.05, weight_decay=0.01, maximize=True),
           dict(lr=0.02, beta2_decay=-0.5, eps=(1e-20, 1e-2), d=1.5), dict(lr=0.3, eps=(None, 0.0), d=1.0)]


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_matches_torch_adafactor_over_300_steps(options, dtype, tolerance):
    groups = [dict(params=["t0", "t6"], lr_factor=0.5, weight_decay=0.1)] if "weight_decay" in options else None
    params, ours, theirs, reference = _torch_run(dtype, options, groups)
    for name, p in theirs.items():
        expected = p.detach().numpy()
        np.testing.assert_allclose(params[name], expected, rtol=tolerance, atol=tolerance * np.abs(expected).max(initial=0))
        state = reference.state.get(p, {})
        k = list(theirs).index(name)
        for key, value in ours._factor_layout.tensor_state(ours._factors, k).items():
            if key in state:
                np.testing.assert_allclose(value, state[key].numpy(), rtol=tolerance, atol=1e-30)


def test_state_dict_of_another_layout_is_refused_and_changes_nothing():
    """(That a state dict resumes a run bit for bit: test_optimizers.py, for every rule.)"""
    rng = np.random.default_rng(3)
    init = {f"t{k}": rng.standard_normal(s) for k, s in enumerate(SHAPES)}
    params = FlatParams.from_arrays(init, dtype=np.float64)
    opt = Adafactor(params, lr=0.05)
    params.grad[:] = rng.standard_normal(params.size)
    opt.step()
    saved = opt.state_dict()
    assert set(saved["state"]) == {"row_var", "col_var", "variance"}
    other = Adafactor(FlatParams.from_arrays(init, dtype=np.float64), lr=0.5)
    wrong = opt.state_dict()
    wrong["state"]["row_var"] = wrong["state"]["row_var"][:-1]
    before = other.state["row_var"].copy()
    with pytest.raises(ValueError, match="row_var"):
        other.load_state_dict(wrong)
    np.testing.assert_array_equal(other.state["row_var"], before)
    assert other.step_count == 0 and other.lr == 0.5


def test_state_is_sublinear():
    params = FlatParams({"w": (1000, 300), "b": 300})
    sizes = {name: buffer.size for name, buffer in Adafactor(params).state.items()}
    assert sizes == {"row_var": 1000, "col_var": 300, "variance": 300}


@pytest.mark.parametrize("changes, match", [
    ({"beta2_decay": 0.1}, "beta2_decay"), ({"d": 0.5}, "d"), ({"eps": (1e-3,)}, "eps"),
    ({"eps": (-1.0, 1e-3)}, r"eps\[0\]"), ({"eps": (None, -1.0)}, r"eps\[1\]"), ({"eps": (1e-50, 1e-3)}, "eps"),
    ({"lr": -1.0}, "lr"), ({"weight_decay": -0.1}, "weight_decay"), ({"maximize": 1}, "maximize")])
def test_bad_hyperparameters_are_refused_and_change_nothing(changes, match):
    params = FlatParams({"w": (3, 2), "b": 2})
    with pytest.raises((ValueError, TypeError), match=match):
        Adafactor(params, **changes)
    opt = Adafactor(params)
    before = opt.config
    with pytest.raises((ValueError, TypeError), match=match):
        opt.set_hyperparameters(**changes)
    assert opt.config == before


def _torch_params(dtype, seed=5):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in [(7, 5), (11,), (2, 3, 4), (), (3, 1)]]


def _groups(params):
    return [{"params": params[:3]}, {"params": params[3:], "lr": 0.003, "weight_decay": 0.1, "maximize": True}]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_dropin_matches_torch_with_groups_skips_and_a_scheduler(dtype, tolerance):
    ours, theirs = _torch_params(dtype), _torch_params(dtype)
    mine = fastopt_torch.Adafactor(_groups(ours), lr=0.02, beta2_decay=-0.7, d=1.5)
    reference = torch.optim.Adafactor(_groups(theirs), lr=0.02, beta2_decay=-0.7, d=1.5)
    schedules = [torch.optim.lr_scheduler.StepLR(o, 50, 0.5) for o in (mine, reference)]
    for step in range(300):
        for a, b in zip(ours, theirs):
            grad = torch.randn_like(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        if step == 10:
            ours[1].grad = theirs[1].grad = None
        mine.step()
        reference.step()
        for s in schedules:
            s.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=tolerance, atol=tolerance * b.abs().max().item())
    saved = mine.state_dict()["state"]
    assert {k: tuple(v.shape) for k, v in saved[0].items()} == {"row_var": (7, 1), "col_var": (1, 5), "step": ()}
    assert {k: tuple(v.shape) for k, v in saved[1].items()} == {"variance": (11,), "step": ()}


def test_dropin_state_dicts_move_between_torch_and_fastopt():
    ours, theirs = _torch_params(torch.float64), _torch_params(torch.float64)
    reference = torch.optim.Adafactor(_groups(theirs), lr=0.02)
    for _ in range(3):
        for p in theirs:
            p.grad = torch.randn_like(p)
        reference.step()
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    mine = fastopt_torch.Adafactor(_groups(ours), lr=0.5)
    mine.load_state_dict(reference.state_dict())
    back = torch.optim.Adafactor(_groups(_torch_params(torch.float64)), lr=0.5)
    back.load_state_dict(mine.state_dict())
    for _ in range(3):
        for a, b in zip(ours, theirs):
            grad = torch.randn_like(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)
    for (saved, p), key in itertools.product(zip(back.state.values(), theirs), ["row_var", "col_var"]):
        if p.dim() >= 2:
            assert saved[key].dim() == p.dim()
    wrong = reference.state_dict()
    wrong["state"][0]["row_var"] = torch.zeros(7, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"row_var.*\(7, 1\)"):
        mine.load_state_dict(wrong)


def test_eps1_is_squared_as_torch_squares_it():
    """torch clamps at ``eps1 * eps1`` of the Python float, rounded once to the dtype (not the
    square of the rounded eps1: for 3e-5 in float32 the two differ)."""
    from fastopt.kernels.rules.adafactor import adafactor_chunk

    scalars = (0.01, 1.0, 0.5, 1.0, 3e-5, 1e-3, 1.0)
    chunk = adafactor_chunk(np.zeros(1, np.float32), np.array([1.0, 0.0]), scalars)
    assert np.float32(3e-5) * np.float32(3e-5) != np.float32(3e-5 * 3e-5)
    assert chunk[5] == np.float32(3e-5 * 3e-5)
