"""bfloat16 parameters (``FlatParams(..., dtype="bfloat16")``): the fused step against its
composition (widen to float32, the float32 rule kernel, round stochastically) bit for bit, the
rounding's bias, the optimizers over them (state in bfloat16, float32 or refused int8), their
state dicts, and bad input."""

import copy

import numpy as np
import pytest

from fastopt import SGD, Adam, AdamW, FlatParams, RMSProp
from fastopt.kernels import quantized as q
from fastopt.kernels.chunks import chunk_table
from fastopt.kernels.cpu import rule_kernel
from fastopt.kernels.rules import RULES
from fastopt.optim.storage import block_bounds

from .kernel_cases import ELEMENTWISE, make_case

ml_dtypes = pytest.importorskip("ml_dtypes")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _bits(values):
    """float32 ``values`` as bfloat16 bits, rounded to nearest even."""
    return q.round_bfloat16_nearest(np.asarray(values, np.float32))


def _composed_step(case, param, state, grad, bounds, groups, key, offset):
    """What a fused step over bfloat16 parameter bits ``param`` must equal: widen, the float32
    rule kernel (``state``, float32, updated in place), round with the parameters' Philox bits
    (``key``: key0, key1, step); parameters of skipping groups keep their bits. Returns the
    parameter bits and which elements stepped."""
    expected = q.decode_bfloat16(param)
    rule_kernel(case.rule)(expected, state, q.decode_bfloat16(grad), bounds, groups, case.table, case.scalars)
    active = np.repeat(groups >= 0, np.diff(bounds.astype(np.int64)))
    bits = q.round_bfloat16_reference(expected, q.random_param_halves(param.size, *key, offset))
    bits[~active] = param[~active]
    return bits, active


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("size", [1, 7, 16411])
@pytest.mark.parametrize("state_kind", [None, "bfloat16"])
def test_the_step_widens_runs_the_rule_and_rounds_stochastically(name, size, state_kind):
    rng = np.random.default_rng(size + 7)
    case, segments = make_case(name, size, np.float32, rng, n_groups=3)
    rule = case.rule
    skipped = [(a, b, -1 if g == 1 else g) for a, b, g in segments]  # group 1 skips this step
    bounds, groups = chunk_table(skipped)
    param, grad = _bits(case.param), _bits(case.grad)
    grad[-1] = 0x7FC0  # a NaN gradient: the parameter becomes the quiet NaN
    state = case.state if state_kind is None else _bits(case.state)
    key0, key1, step = 0x0BADBEEF, 0x12345678, 5
    # (the serial build, which computes the same bits, once: each build compiles for seconds)
    builds = ((True, 0), (False, 0), (True, 5)) if name == "adamw_step" else ((True, 0), (True, 5))
    for parallel, offset in builds:
        p, s = param.copy(), state.copy()
        q.rounded_kernel(rule, state_kind, True, parallel)(
            p, s, grad, bounds, groups, case.table, case.scalars, np.uint64(key0), np.uint64(key1),
            np.uint64(step), np.uint64(offset))
        expected_state = state.copy() if state_kind is None else q.decode_bfloat16(state)
        expected_bits, active = _composed_step(case, param, expected_state, grad, bounds, groups, (key0, key1, step),
                                               offset)
        np.testing.assert_array_equal(p, expected_bits)
        if state_kind == "bfloat16":
            random = q.random_halves(size, key0, key1, step, len(rule.state), offset)
            expected_state = q.round_bfloat16_reference(expected_state, random)
            expected_state[:, ~active] = state[:, ~active]
        np.testing.assert_array_equal(s, expected_state)
        if active[-1]:
            assert p[-1] == 0x7FC0


@pytest.mark.parametrize("name", [name for name in ELEMENTWISE if RULES[name].state])
@pytest.mark.parametrize("size", [7, 4099])
def test_the_int8_step_over_bfloat16_params_widens_decodes_and_rounds(name, size):
    rng = np.random.default_rng(size + 11)
    case, segments = make_case(name, size, np.float32, rng, n_groups=3)
    rule = case.rule
    skipped = [(a, b, -1 if g == 1 else g) for a, b, g in segments]
    bounds, groups = q.block_table(skipped)
    codes, absmax = q.encode_reference(case.state, bounds, rule.state)
    param, grad = _bits(case.param), _bits(case.grad)
    key0, key1, step = 0x5EED, 0xC0FFEE, 12
    builds = ((True, 0), (False, 0), (True, 9)) if name == "adamw_step" else ((True, 0), (True, 9))
    for parallel, offset in builds:
        p, c, a = param.copy(), codes.copy(), absmax.copy()
        q.int8_kernel(rule, parallel, True)(p, c, a, grad, bounds, groups, case.table, case.scalars, np.uint64(key0),
                                            np.uint64(key1), np.uint64(step), np.uint64(offset))
        expected_state = q.decode_int8(codes, absmax, bounds, rule.state)
        expected_bits, active = _composed_step(case, param, expected_state, grad, bounds, groups, (key0, key1, step),
                                               offset)
        expected_codes, expected_absmax = q.encode_reference(expected_state, bounds, rule.state)
        expected_codes[:, ~active] = codes[:, ~active]
        expected_absmax[:, groups < 0] = absmax[:, groups < 0]
        np.testing.assert_array_equal(p, expected_bits)
        np.testing.assert_array_equal(c, expected_codes)
        np.testing.assert_array_equal(a, expected_absmax)


def test_parameter_rounding_is_unbiased():
    # From 1 with a gradient of -1 (both exact in bfloat16), a step of lr takes every parameter
    # to x, 30 % of the way from 1 to the next bfloat16 value; the rounded values average to x
    # within 4 standard errors.
    n = 400_000
    lr = 0.3 * 2.0**-7
    x = np.float32(1.0) + np.float32(lr)
    params = FlatParams({"w": n}, dtype="bfloat16")
    params.data[:] = 1.0
    params.grad[:] = -1.0
    SGD(params, lr=lr, state_seed=11).step()
    values = params.data.astype(np.float64)
    assert set(np.unique(values)) == {1.0, 1.0 + 2.0**-7}
    up = np.mean(values > 1.0)
    assert abs(up - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    assert abs(values.mean() - float(x)) < 4 * 2.0**-7 * np.sqrt(0.3 * 0.7 / n)


def test_round_to_nearest_would_lose_small_steps_that_stochastic_rounding_keeps():
    # 1000 steps of 1e-4 each from 1.0: each is under half a bfloat16 step (2**-8 at 1), so
    # rounding to nearest would never move; stochastic rounding gets within a few steps of 1.1.
    params = FlatParams({"w": 10_000}, dtype="bfloat16")
    params.data[:] = 1.0
    opt = SGD(params, lr=1e-4, state_seed=2)
    for _ in range(1000):
        params.grad[:] = -1.0
        opt.step()
    assert abs(params.data.astype(np.float64).mean() - 1.1) < 2e-3


@pytest.mark.parametrize("state_dtype, stored", [(None, "bfloat16"), ("bfloat16", "bfloat16"),
                                                 ("float32", "float32"), ("int8", "int8")])
def test_optimizers_over_bfloat16_params_follow_the_float32_rule(state_dtype, stored):
    rng = np.random.default_rng(0)
    shapes = {"w": (300, 7), "b": 7}
    start = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    params = FlatParams.from_arrays(start, dtype="bfloat16")
    reference = FlatParams.from_arrays({name: params[name].astype(np.float32) for name in shapes})
    start_values = reference.data.copy()
    opt = AdamW(params, lr=1e-2, weight_decay=0.1, state_dtype=state_dtype, state_seed=5)
    ref = AdamW(reference, lr=1e-2, weight_decay=0.1)
    assert opt.state_dtype == stored and params.dtype == BFLOAT16
    target = rng.standard_normal(params.size).astype(np.float32)
    for _ in range(50):  # the gradient of 0.5 * |p - target|**2, each from its own parameters
        params.grad[:] = params.data.astype(np.float32) - target
        reference.grad[:] = reference.data - target
        opt.step()
        ref.step()
    # bfloat16 keeps 8 bits: each step's rounding moves a value by less than one step of 2**-8
    # relative, unbiased, so after 50 steps the two differ by a random walk of about
    # sqrt(50) * 2**-9 relative: small against how far the parameters moved (a rule off by a
    # factor would be as far off as the movement itself)
    moved = np.linalg.norm(reference.data - start_values)
    apart = np.linalg.norm(params.data.astype(np.float64) - reference.data)
    # int8 state adds its own quantization: over float32 parameters it alone measures 3.8 % and
    # (first moments) 13.8 % here; bfloat16 state 3.0 % and 1.2 % over bfloat16 parameters
    bounds = (0.1, 0.2) if state_dtype == "int8" else (0.05, 0.05)
    assert apart < bounds[0] * moved
    assert opt.state["exp_avg"].dtype == np.float32
    moments = np.linalg.norm(ref.state["exp_avg"])
    assert np.linalg.norm(opt.state["exp_avg"] - ref.state["exp_avg"]) < bounds[1] * moments


def test_a_step_is_a_function_of_the_seed_and_the_step():
    def run(seed):
        params = FlatParams({"w": 5000}, dtype="bfloat16")
        params.data[:] = np.linspace(-1, 1, 5000)
        opt = Adam(params, lr=1e-3, state_seed=seed)
        for k in range(3):
            params.grad[:] = np.cos(np.arange(5000) * (k + 1))
            opt.step()
        return params.data.view(np.uint16).copy(), opt

    first, opt = run(1)
    np.testing.assert_array_equal(run(1)[0], first)
    assert not np.array_equal(run(2)[0], first)
    # a state dict carries the seed and the state: a copy continues bit for bit
    params = FlatParams({"w": 5000}, dtype="bfloat16")
    params.data[:] = opt.params.data
    copy = Adam(params, lr=1e-3)
    copy.load_state_dict(opt.state_dict())
    for optimizer in (opt, copy):
        optimizer.params.grad[:] = np.sin(np.arange(5000.0))
        optimizer.step()
    np.testing.assert_array_equal(copy.params.data.view(np.uint16), opt.params.data.view(np.uint16))


def test_state_dicts_cross_between_bfloat16_and_float32_state():
    params = FlatParams({"w": 1000}, dtype="bfloat16")
    opt = RMSProp(params, lr=1e-2, momentum=0.9, state_dtype="float32")
    params.grad[:] = np.linspace(-3, 3, 1000)
    opt.step()
    saved = opt.state_dict()
    assert saved["state_dtype"] == "float32" and saved["dtype"] == "bfloat16"
    assert saved["state"]["square_avg"].dtype == np.float32
    other = RMSProp(FlatParams({"w": 1000}, dtype="bfloat16"), lr=1e-2, momentum=0.9)
    other.load_state_dict(saved)
    assert other.state_dtype == "bfloat16"
    np.testing.assert_array_equal(other.state["square_avg"],
                                  q.decode_bfloat16(_bits(opt.state["square_avg"])))
    third = RMSProp(FlatParams({"w": 1000}, dtype="bfloat16"), lr=1e-2, momentum=0.9, state_dtype="int8")
    third.load_state_dict(other.state_dict())  # bfloat16 state into int8: quantized on load
    values = np.stack([other.state[name] for name in third.rule.state])
    bounds = block_bounds(third.params)
    expected = q.decode_int8(*q.encode_reference(values, bounds, third.rule.state), bounds, third.rule.state)
    for k, name in enumerate(third.rule.state):
        np.testing.assert_array_equal(third.state[name], expected[k])
    assert third.state_dict()["state_dtype"] == "int8"


def test_l2_penalty_reads_the_bfloat16_values():
    params = FlatParams({"w": 3}, dtype="bfloat16")
    params.data[:] = [1.0, 2.0, 3.0]
    assert SGD(params, lr=0.1, weight_decay=0.5).l2_penalty() == 0.5 * 0.5 * 14.0


def test_from_arrays_takes_bfloat16_arrays():
    values = np.array([0.1, -2.5, 3.0], ml_dtypes.bfloat16)
    params = FlatParams.from_arrays({"w": values, "b": [1.0]}, dtype="bfloat16")
    np.testing.assert_array_equal(params["w"].view(np.uint16), values.view(np.uint16))
    widened = FlatParams.from_arrays({"w": values})
    np.testing.assert_array_equal(widened["w"], values.astype(np.float32))


def test_bad_input_is_refused_before_anything_changes():
    params = FlatParams({"w": 10}, dtype="bfloat16")
    with pytest.raises(ValueError, match=r"state_dtype='float64'"):
        Adam(params, state_dtype="float64")
    with pytest.raises(TypeError, match=r"dtype must be float32, float64 or 'bfloat16', got dtype=float16"):
        FlatParams({"w": 10}, dtype="float16")
    from fastopt import LAMB

    with pytest.raises(ValueError, match=r"LAMB.*bfloat16 parameters"):
        LAMB(params)
    source, target = Adam(params, lr=0.1), Adam(FlatParams({"w": 10}), lr=0.2)
    for optimizer, grad in ((source, 1.0), (target, -2.0)):  # both with state of their own
        optimizer.params.grad[:] = grad
        optimizer.step()
    before = target.state_dict()
    with pytest.raises(ValueError, match="dtype bfloat16"):
        target.load_state_dict(source.state_dict())
    after = target.state_dict()
    assert after["config"] == before["config"] and after["step"] == before["step"] == 1
    np.testing.assert_array_equal(after["state"]["exp_avg"], before["state"]["exp_avg"])
    assert np.all(before["state"]["exp_avg"] != 0)


def test_what_bfloat16_params_do_not_do_yet_is_refused():
    # (On the GPU they do: tests/cuda_facade_check.py, under the simulator.)
    from fastopt.nn.model import MLP

    with pytest.raises(TypeError, match=r"dtype must be float32 or float64, got dtype=bfloat16"):
        MLP([4, 3], dtype="bfloat16")
    from fastopt.distributed import ShardedOptimizer

    with pytest.raises(ValueError, match="params are bfloat16; data parallelism"):
        ShardedOptimizer(FlatParams({"w": 10}, dtype="bfloat16"), Adam)


# -- fastopt.torch: bfloat16 torch parameters, and bfloat16 state over float32 ones -------------------


def _torch_pair(dtype, seed=0):
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(33, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3)).to(dtype)
    x, y = torch.randn(64, 33).to(dtype), torch.randn(64, 3).to(dtype)
    return model, x, y


def _train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()


def test_torch_bfloat16_parameters_step_as_the_core_optimizer_does():
    torch = pytest.importorskip("torch")
    import fastopt.torch

    model, x, y = _torch_pair(torch.bfloat16)
    start = [p.detach().clone() for p in model.parameters()]
    opt = fastopt.torch.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, state_seed=9)
    _train(model, opt, x, y, 1)
    # the core optimizer over the same values and gradient, with the same seed: the same bits
    grads = [p.grad.detach().clone() for p in model.parameters()]
    names = {f"p{k}": tuple(p.shape) for k, p in enumerate(start)}
    params = FlatParams(names, dtype="bfloat16")
    for k, (p, g) in enumerate(zip(start, grads)):
        params[f"p{k}"] = p.float().numpy()
        params.grad_of(f"p{k}")[...] = g.float().numpy()
    AdamW(params, lr=1e-2, weight_decay=0.1, state_seed=9).step()
    for k, p in enumerate(model.parameters()):
        assert p.dtype == torch.bfloat16
        np.testing.assert_array_equal(p.detach().view(torch.int16).numpy().view(np.uint16),
                                      params[f"p{k}"].view(np.uint16))
    state = opt.state[next(model.parameters())]
    assert state["exp_avg"].dtype == torch.bfloat16 and state["exp_avg_sq"].dtype == torch.bfloat16
    assert torch.count_nonzero(state["exp_avg"]) > 0


def test_torch_bfloat16_training_tracks_torch_and_state_dicts_cross():
    torch = pytest.importorskip("torch")
    import fastopt.torch

    model, x, y = _torch_pair(torch.bfloat16)
    reference, _, _ = _torch_pair(torch.bfloat16)
    opt = fastopt.torch.AdamW(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    _train(model, opt, x, y, 40)
    _train(reference, ref, x, y, 40)
    with torch.no_grad():
        loss, ref_loss = ((model(x) - y) ** 2).mean().item(), ((reference(x) - y) ** 2).mean().item()
        first = ((_torch_pair(torch.bfloat16)[0](x) - y) ** 2).mean().item()
    assert loss < 0.8 * first and abs(loss - ref_loss) < 0.05 * first  # both train, alike
    # torch's state dict (bfloat16 state, round to nearest) loads into fastopt's, and the reverse
    mine = fastopt.torch.AdamW(reference.parameters(), lr=1e-2)
    mine.load_state_dict(ref.state_dict())
    p = next(reference.parameters())
    assert torch.equal(mine.state[p]["exp_avg"], ref.state[p]["exp_avg"])
    theirs = torch.optim.AdamW(model.parameters(), lr=1e-2)
    theirs.load_state_dict(copy.deepcopy(opt.state_dict()))  # a copy: torch would keep the live views
    q = next(model.parameters())
    assert theirs.state[q]["exp_avg_sq"].data_ptr() != opt.state[q]["exp_avg_sq"].data_ptr()
    assert torch.equal(theirs.state[q]["exp_avg_sq"], opt.state[q]["exp_avg_sq"])
    assert torch.count_nonzero(theirs.state[q]["exp_avg_sq"]) > 0


def test_torch_bfloat16_state_over_float32_parameters_is_a_live_view():
    torch = pytest.importorskip("torch")
    import fastopt.torch

    model, x, y = _torch_pair(torch.float32)
    start = [p.detach().clone() for p in model.parameters()]
    opt = fastopt.torch.Adam(model.parameters(), lr=1e-2, state_dtype="bfloat16", state_seed=4)
    _train(model, opt, x, y, 1)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    params = FlatParams.from_arrays({f"p{k}": p.numpy() for k, p in enumerate(start)})
    for k, g in enumerate(grads):
        params.grad_of(f"p{k}")[...] = g.numpy()
    core = Adam(params, lr=1e-2, state_dtype="bfloat16", state_seed=4)
    core.step()
    p = next(model.parameters())
    np.testing.assert_array_equal(p.detach().numpy(), params["p0"])
    state = opt.state[p]["exp_avg"]
    assert state.dtype == torch.bfloat16
    np.testing.assert_array_equal(state.float().numpy().reshape(-1), core.state["exp_avg"][:p.numel()])
    state.fill_(0.25)  # a live view: the kernels' own bits change with it
    assert np.all(opt._slices[0].core.state["exp_avg"][:p.numel()] == 0.25)


def test_torch_groups_round_as_one_buffer():
    # Philox counts from the buffer's start in every group, so two groups of equal settings
    # round exactly as one group over the same parameters
    torch = pytest.importorskip("torch")
    import fastopt.torch

    results = []
    for split in (False, True):
        model, x, y = _torch_pair(torch.bfloat16)
        layers = list(model.parameters())
        groups = [{"params": layers[:2]}, {"params": layers[2:]}] if split else [{"params": layers}]
        opt = fastopt.torch.SGD(groups, lr=0.05, momentum=0.9)
        _train(model, opt, x, y, 3)
        results.append([p.detach().view(torch.int16).clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_torch_groups_keep_their_offsets_when_a_scheduler_adds_momentum():
    # float32 parameters with bfloat16 state: SGD groups without momentum have no state (and no
    # rounding) until a scheduler moves momentum off 0; their new cores must count Philox from
    # the group's own start, as cores built with momentum do
    torch = pytest.importorskip("torch")
    import fastopt.torch

    results = []
    for momentum_later in (False, True):
        model, x, y = _torch_pair(torch.float32)
        layers = list(model.parameters())
        momentum = 0.0 if momentum_later else 0.9
        opt = fastopt.torch.SGD([{"params": layers[:2]}, {"params": layers[2:]}], lr=0.05, momentum=momentum,
                                state_dtype="bfloat16")
        for group in opt.param_groups:
            group["momentum"] = 0.9
        _train(model, opt, x, y, 3)
        assert [piece.core._storage.offset for piece in opt._slices] == [0, layers[0].numel() + layers[1].numel()]
        results.append([opt.state[p]["momentum_buffer"].clone() for p in layers])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_torch_sgd_over_bfloat16_resumes_bit_for_bit():
    # torch's SGD keeps no step count; over bfloat16 the step picks the rounding bits, so its
    # state carries "step" and a resumed run continues as the uninterrupted one
    torch = pytest.importorskip("torch")
    import fastopt.torch

    model, x, y = _torch_pair(torch.bfloat16)
    opt = fastopt.torch.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, x, y, 3)
    saved = copy.deepcopy(opt.state_dict())
    values = [p.detach().clone() for p in model.parameters()]
    assert saved["state"][0]["step"] == 3
    _train(model, opt, x, y, 3)
    resumed, _, _ = _torch_pair(torch.bfloat16)
    with torch.no_grad():
        for p, value in zip(resumed.parameters(), values):
            p.copy_(value)
    again = fastopt.torch.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    again.load_state_dict(saved)
    _train(resumed, again, x, y, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


def test_torch_add_param_group_refused_leaves_the_optimizer_whole():
    torch = pytest.importorskip("torch")
    import fastopt.torch

    model, x, y = _torch_pair(torch.float32)
    opt = fastopt.torch.Adam(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    _train(model, opt, x, y, 2)
    extra = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"params\[4\] has dtype torch.float64; state_dtype='bfloat16' takes"):
        opt.add_param_group({"params": [extra]})
    assert len(opt.param_groups) == 1
    _train(model, opt, x, y, 2)  # steps on, hooks and all
    p = next(model.parameters())
    assert opt.state[p]["step"] == 4 and opt.state_dict()["state"][0]["step"] == 4
    lamb = fastopt.torch.LAMB(torch.nn.Linear(3, 2).parameters())
    with pytest.raises(ValueError, match=r"params\[2\] is bfloat16; LAMB works on whole tensors"):
        lamb.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))]})
    assert len(lamb.param_groups) == 1


def test_torch_refuses_what_it_cannot_do_yet():
    torch = pytest.importorskip("torch")
    import fastopt.torch

    model, _, _ = _torch_pair(torch.bfloat16)
    with pytest.raises(ValueError, match=r"state_dtype must be None, 'bfloat16' or 'int8'.*state_dtype='float16'"):
        fastopt.torch.Adam(model.parameters(), state_dtype="float16")
    with pytest.raises(ValueError, match="LAMB works on whole tensors and does not take bfloat16"):
        fastopt.torch.LAMB(model.parameters())
    with pytest.raises(ValueError, match="state_dtype='bfloat16' takes float32 and bfloat16"):
        fastopt.torch.Adam(torch.nn.Linear(2, 2).double().parameters(), state_dtype="bfloat16")
    with pytest.raises(TypeError, match="float16"):
        fastopt.torch.Adam(torch.nn.Linear(2, 2).half().parameters())
