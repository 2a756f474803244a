"""Muon: the matrix rule's launch against its float64 reference, fastopt.Muon and
fastopt.torch.Muon against torch's rule (a float64 transcription) and against torch.optim.Muon
itself (bfloat16 iteration), and what they refuse."""

import dataclasses

import numpy as np
import pytest
import torch

import fastopt
import fastopt.torch as fastopt_torch
from fastopt import FlatParams, Muon, ParamGroup
from fastopt.kernels import chunks, matrixwise
from fastopt.kernels.rules import muon as muon_rule
from kernel_cases import MATRIXWISE, make_matrix_case

#: Wide, tall, square and empty matrices, one shape twice (stacked into one batched product).
SHAPES = [(7, 5), (4, 9), (7, 5), (0, 3), (33, 70), (3, 3)]
#: A bfloat16 step may differ from torch's by an ulp of bfloat16 in the orthogonalised update
#: (the float32 products' sums are added in another order before rounding): 2**-8 of its
#: largest entry (at most 1), times the step size.
BFLOAT16_ULP = 2.0**-8


def transcription(grad, buffer, param, lr, weight_decay, momentum, nesterov, adjust, steps=5,
                  coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7):
    """torch.optim.Muon's ``_single_tensor_muon`` for one float64 parameter, with the
    Newton-Schulz iteration in the tensors' dtype instead of bfloat16 (in place)."""
    buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(buffer, momentum) if nesterov else buffer
    a, b, c = coefficients
    x = update.clone()
    if x.size(0) > x.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    if update.size(0) > update.size(1):
        x = x.T
    rows, cols = param.shape
    ratio = 0.2 * max(rows, cols) ** 0.5 if adjust == "match_rms_adamw" else max(1, rows / cols) ** 0.5
    param.mul_(1 - lr * weight_decay)
    param.add_(x, alpha=-lr * ratio)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", MATRIXWISE)
@pytest.mark.parametrize("seed", range(4))
def test_launch_matches_reference(name, dtype, seed, monkeypatch):
    """Several tiles per matrix, a skipped matrix (group -1), an empty one, groups; 0 to 5
    Newton-Schulz steps. float32: the kernel iterates in float32, the reference in float64."""
    monkeypatch.setattr(chunks, "TENSOR_TILE", 64)
    case, _ = make_matrix_case(name, SHAPES, dtype, np.random.default_rng(seed), skipped=(1,))
    expected = case.copy()
    expected.rule.reference(*expected.arguments(), shapes=case.shapes())
    launch = matrixwise.CpuLaunch(case.rule, case.param.size, dtype,
                                  (case.tile_tensor, case.tensor_tiles, case.matrices))
    before = case.copy()
    launch(*case.arguments())
    start, rows, cols = case.shapes()[1]
    skipped = slice(start, start + rows * cols)
    np.testing.assert_array_equal(case.param[skipped], before.param[skipped])
    np.testing.assert_array_equal(case.state[:, skipped], before.state[:, skipped])
    scale = np.abs(before.state[0]).astype(np.float64) + np.abs(before.grad)
    assert np.all(np.abs(case.state[0] - expected.state[0].astype(np.float64)) <= 4 * np.finfo(dtype).eps * scale)
    moved = np.abs(expected.param.astype(np.float64) - before.param)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    assert np.all(np.abs(case.param - expected.param.astype(np.float64)) <= tolerance * (moved.max() + np.abs(before.param)))


def test_launch_refuses_elementwise_builds():
    from fastopt.kernels import cpu

    with pytest.raises(ValueError, match="transforms matrices"):
        cpu.rule_kernel(fastopt.kernels.rules.RULES["muon_step"])


def _layout(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {f"m{k}": shape for k, shape in enumerate(SHAPES)}
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}, rng


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust", [None, "match_rms_adamw"])
def test_float64_matches_torch_rule_over_300_steps(nesterov, adjust):
    """fastopt.Muon (two groups: an lr factor, a weight decay of their own) against the
    transcription of torch's rule, float64, 300 steps: within 1e-10 relative."""
    init, rng = _layout()
    params = FlatParams.from_arrays(init, dtype=np.float64)
    groups = [ParamGroup(["m1", "m4"], lr_factor=0.5, weight_decay=0.0)]
    opt = Muon(params, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust, groups=groups)
    theirs = {name: torch.tensor(value) for name, value in init.items()}
    buffers = {name: torch.zeros_like(value) for name, value in theirs.items()}
    for _ in range(300):
        for name, value in theirs.items():
            grad = rng.standard_normal(value.shape)
            params.grad_of(name)[...] = grad
            lr, decay = (0.01, 0.0) if name in ("m1", "m4") else (0.02, 0.1)
            if value.numel():
                transcription(torch.tensor(grad), buffers[name], value, lr, decay, 0.95, nesterov, adjust)
        opt.step()
    for name, value in theirs.items():
        np.testing.assert_allclose(params[name], value.numpy(), rtol=1e-10, atol=1e-10 * np.abs(value.numpy()).max(initial=0))
        np.testing.assert_allclose(opt.state["momentum_buffer"][params.segment(name)[0]:params.segment(name)[1]],
                                   buffers[name].numpy().reshape(-1), rtol=1e-10, atol=1e-12)


def test_bfloat16_iteration_matches_torch_muon():
    """``ns_dtype="bfloat16"`` against torch.optim.Muon itself, float32, 20 steps: within an
    ulp of bfloat16 of the update per step (where the products' sums round alike, equal)."""
    init, rng = _layout(np.float32, seed=1)
    params = FlatParams.from_arrays(init, dtype=np.float32)
    opt = Muon(params, lr=0.02, ns_dtype="bfloat16")
    theirs = [torch.nn.Parameter(torch.tensor(value)) for value in init.values()]
    reference = torch.optim.Muon(theirs, lr=0.02)
    for step in range(1, 21):
        for name, p in zip(init, theirs):
            grad = rng.standard_normal(p.shape).astype(np.float32)
            params.grad_of(name)[...] = grad
            p.grad = torch.tensor(grad)
        opt.step()
        reference.step()
        for name, p in zip(init, theirs):
            rows, cols = p.shape if p.numel() else (1, 1)
            bound = step * 0.02 * max(1, rows / cols) ** 0.5 * BFLOAT16_ULP
            difference = np.abs(params[name] - p.detach().numpy()).max(initial=0)
            assert difference <= bound, (name, step, difference, bound)


def test_default_iteration_differs_from_bfloat16_by_its_resolution():
    """The default (the parameters' dtype) is not torch's bfloat16: one step's update differs
    by about bfloat16's resolution, no more."""
    init, rng = _layout(np.float32, seed=2)
    grads = {name: rng.standard_normal(value.shape).astype(np.float32) for name, value in init.items()}
    results = []
    for ns_dtype in (None, "bfloat16"):
        params = FlatParams.from_arrays(init, dtype=np.float32)
        opt = Muon(params, lr=1.0, weight_decay=0.0, ns_dtype=ns_dtype)
        for name, grad in grads.items():
            params.grad_of(name)[...] = grad
        opt.step()
        results.append(params["m4"] - init["m4"])
    difference = np.abs(results[0] - results[1]).max()
    assert 0 < difference <= 8 * BFLOAT16_ULP * np.abs(results[0]).max()


def test_hyperparameters_on_the_fast_path_and_rule_switch():
    init, _ = _layout()
    params = FlatParams.from_arrays(init, dtype=np.float64)
    opt = Muon(params)
    opt.set_hyperparameters(ns_steps=3, momentum=0.9)
    assert opt.config.ns_steps == 3 and opt._scalars(1)[1] == 0.9 and opt._scalars(1)[8] == 3.0
    opt.set_momentum(0.85)
    assert opt.config.momentum == 0.85
    assert opt.rule.name == "muon_nesterov_step"
    opt.set_hyperparameters(nesterov=False)
    assert opt.rule.name == "muon_step"


@pytest.mark.parametrize("changes, match", [
    ({"ns_steps": 100}, "ns_steps"), ({"ns_steps": 2.0}, "ns_steps"), ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
    ({"ns_coefficients": (1.0, float("nan"), 2.0)}, "ns_coefficients"), ({"adjust_lr_fn": "rms"}, "adjust_lr_fn"),
    ({"ns_dtype": "float16"}, "ns_dtype"), ({"momentum": -0.1}, "momentum"), ({"eps": 0.0}, "eps"),
    ({"weight_decay": -1.0}, "weight_decay")])
def test_bad_hyperparameters_are_refused_and_change_nothing(changes, match):
    init, _ = _layout()
    params = FlatParams.from_arrays(init, dtype=np.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        Muon(params, **changes)
    opt = Muon(params)
    before = opt.config
    with pytest.raises((ValueError, TypeError), match=match):
        opt.set_hyperparameters(**changes)
    assert opt.config == before


def test_parameters_that_are_not_matrices_are_refused():
    params = FlatParams({"w": (4, 3), "b": 3})
    with pytest.raises(ValueError, match=r"'b' has shape \(3,\).*AdamW"):
        Muon(params)
    with pytest.raises(ValueError, match="2D"):
        fastopt_torch.Muon([torch.nn.Parameter(torch.zeros(3))])
    opt = fastopt_torch.Muon([torch.nn.Parameter(torch.zeros(3, 2))])
    with pytest.raises(ValueError, match="2D"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]})
    assert len(opt.param_groups) == 1


def _torch_model(dtype, seed=3):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in [(7, 5), (4, 9), (16, 8), (7, 5)]]


def _groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.01, "weight_decay": 0.0}]


def test_dropin_bfloat16_matches_torch_muon_with_groups_skips_and_a_scheduler():
    ours, theirs = _torch_model(torch.float32), _torch_model(torch.float32)
    mine = fastopt_torch.Muon(_groups(ours), lr=0.02, adjust_lr_fn="match_rms_adamw", ns_dtype="bfloat16")
    reference = torch.optim.Muon(_groups(theirs), lr=0.02, adjust_lr_fn="match_rms_adamw")
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(o, 30) for o in (mine, reference)]
    for step in range(1, 31):
        for a, b in zip(ours, theirs):
            grad = torch.randn_like(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        if step == 10:  # no gradient: skipped, as torch skips it
            ours[1].grad = theirs[1].grad = None
        mine.step()
        reference.step()
        for s in schedules:
            s.step()
        for a, b in zip(ours, theirs):
            bound = step * 0.02 * 0.2 * max(a.shape) ** 0.5 * BFLOAT16_ULP
            assert (a - b).abs().max().item() <= bound
    assert set(mine.state_dict()["state"][0]) == {"momentum_buffer"}


def test_dropin_float64_matches_torch_rule():
    ours, theirs = _torch_model(torch.float64), _torch_model(torch.float64)
    mine = fastopt_torch.Muon(_groups(ours), lr=0.02, nesterov=False)
    buffers = [torch.zeros_like(p) for p in theirs]
    for _ in range(50):
        for k, (a, b) in enumerate(zip(ours, theirs)):
            grad = torch.randn_like(a)
            a.grad = grad.clone()
            lr, decay = (0.02, 0.1) if k < 2 else (0.01, 0.0)
            with torch.no_grad():
                transcription(grad, buffers[k], b, lr, decay, 0.95, False, None)
        mine.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)


def test_dropin_state_dicts_move_between_torch_and_fastopt():
    ours, theirs = _torch_model(torch.float32), _torch_model(torch.float32)
    reference = torch.optim.Muon(theirs, lr=0.02)
    for _ in range(3):
        for p in theirs:
            p.grad = torch.randn_like(p)
        reference.step()
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    mine = fastopt_torch.Muon(ours, lr=0.5, ns_dtype="bfloat16")
    mine.load_state_dict(reference.state_dict())
    assert mine.param_groups[0]["lr"] == 0.02
    back = torch.optim.Muon(_torch_model(torch.float32), lr=0.5)
    back.load_state_dict(mine.state_dict())
    for _ in range(3):
        for a, b in zip(ours, theirs):
            grad = torch.randn_like(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() <= 3 * 0.02 * 2**0.5 * BFLOAT16_ULP
    for saved, p in zip(back.state.values(), theirs):
        assert saved["momentum_buffer"].shape == p.shape


def test_newton_schulz_is_torch_zeropower():
    """The iteration alone, bfloat16, against torch's function, on a batch of one shape."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    rng = np.random.default_rng(5)
    stack = rng.standard_normal((3, 6, 10)).astype(np.float32)
    scalars = (0.0, 0.0, 0.0, 0.0, 3.4445, -4.7750, 2.0315, 1e-7, 5.0, 1.0)
    ours = muon_rule.newton_schulz(stack, scalars)
    for k in range(3):
        theirs = _zeropower_via_newtonschulz(torch.tensor(stack[k]), (3.4445, -4.7750, 2.0315), 5, 1e-7)
        np.testing.assert_allclose(ours[k], theirs.float().numpy(), rtol=0, atol=2 * BFLOAT16_ULP)


def test_round_bfloat16_rounds_to_nearest_even():
    values = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -2.5, np.inf, np.nan,
                       np.float32(3.4e38)], dtype=np.float32)
    rounded = muon_rule.round_bfloat16(values.copy())
    expected = torch.tensor(values).bfloat16().float().numpy()
    np.testing.assert_array_equal(rounded, expected)


def test_config_is_a_plain_dataclass():
    config = fastopt.MuonConfig(ns_coefficients=[1.0, 2.0, 3.0])
    assert config.ns_coefficients == (1.0, 2.0, 3.0)
    assert dataclasses.asdict(config)["ns_dtype"] is None


@pytest.mark.parametrize("momentum", [0.0, 0.3, 0.95])
@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_buffer_is_torch_lerp_bit_for_bit(momentum, nesterov):
    """The buffer is ``buf.lerp_(g, 1 - momentum)`` as torch computes it (from ``g`` when the
    weight is 0.5 or more): with momentum 0 it is the last gradient exactly, even after a huge one."""
    init, rng = _layout(np.float32, seed=6)
    params = FlatParams.from_arrays(init, dtype=np.float32)
    opt = Muon(params, lr=0.01, momentum=momentum, nesterov=nesterov, ns_dtype="bfloat16")
    theirs = [torch.nn.Parameter(torch.tensor(value)) for value in init.values()]
    reference = torch.optim.Muon(theirs, lr=0.01, momentum=momentum, nesterov=nesterov)
    for step in range(4):
        for name, p in zip(init, theirs):
            grad = (rng.standard_normal(p.shape) * (1e8 if step == 0 else 1.0)).astype(np.float32)
            params.grad_of(name)[...] = grad
            p.grad = torch.tensor(grad)
        opt.step()
        reference.step()
    for name, p in zip(init, theirs):
        lo, hi = params.segment(name)
        expected = reference.state[p]["momentum_buffer"].numpy().reshape(-1) if p.numel() else np.zeros(0)
        np.testing.assert_array_equal(opt.state["momentum_buffer"][lo:hi], expected)
        if momentum == 0.0 and p.numel():
            np.testing.assert_array_equal(expected, p.grad.numpy().reshape(-1))


def test_dropin_refuses_a_set_of_parameters_as_torch_does():
    with pytest.raises(TypeError):
        fastopt_torch.Muon([{"params": {torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.ones(2, 2))}}])
