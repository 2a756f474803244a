"""int8 optimizer state in fastopt.torch (``state_dtype="int8"``, and LAMB's bfloat16): the
same bits as the core optimizer's, the torch-format state (uint8 codes in the parameter's shape, the
float32 absmax of its own blocks, the map), live; state dicts across int8, float32 and torch's
own, through torch's load (which casts state to the parameters' dtype); resets; and bad input."""

import copy

import numpy as np
import pytest

from fastopt import FlatParams
from fastopt.kernels import quantized as q

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402

# a weight of 2,310 elements: two blocks of 2,048 and 262; the others one block each
SHAPES = ((33, 70), (33,), (3, 33), (3,))


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(70, 33), torch.nn.Tanh(), torch.nn.Linear(33, 3)).to(dtype)
    x, y = torch.randn(64, 70).to(dtype), torch.randn(64, 3).to(dtype)
    return model, x, y


def _backward(model, x, y):
    ((model(x) - y) ** 2).mean().backward()


def _train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        _backward(model, x, y)
        optimizer.step()


CLASSES = {
    "Adam": (ft.Adam, dict(lr=1e-2, weight_decay=0.01)),
    "AdamW-amsgrad": (ft.AdamW, dict(lr=1e-2, amsgrad=True)),
    "SGD-nesterov": (ft.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "RMSprop-centered": (ft.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)),
    "Adagrad": (ft.Adagrad, dict(lr=0.05, initial_accumulator_value=0.1)),
    "NAdam": (ft.NAdam, dict(lr=1e-2)),
    "Lion": (ft.Lion, dict(lr=1e-3)),
    "LAMB": (ft.LAMB, dict(lr=1e-2, weight_decay=0.01)),
}


def _core_twin(opt, start, dtype):
    """The core fastopt optimizer of ``opt``'s one group, int8 state, over copies of ``start``."""
    shapes = {f"p{k}": tuple(p.shape) for k, p in enumerate(start)}
    params = FlatParams(shapes, dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    for k, p in enumerate(start):
        params[f"p{k}"] = p.float().numpy()
    group = opt.param_groups[0]
    cls = opt._core_class_for(group)
    core = cls(params, **opt._core_options(group), state_dtype="int8", state_seed=5)
    opt._round_carried(core, torch.float32)  # NAdam's mu_product in torch's float32, as the façade keeps it
    return params, core


@pytest.mark.parametrize("name, dtype", [(name, dtype) for name in CLASSES for dtype in (torch.float32, torch.bfloat16)
                                          if not (name == "LAMB" and dtype == torch.bfloat16)],  # refused
                         ids=lambda value: str(value).replace("torch.", ""))
def test_int8_state_steps_as_the_core_optimizer_does(name, dtype):
    cls, options = CLASSES[name]
    model, x, y = _model(dtype)
    start = [p.detach().clone() for p in model.parameters()]
    opt = cls(model.parameters(), **options, state_dtype="int8", state_seed=5)
    params, core = _core_twin(opt, start, dtype)
    for _ in range(3):
        opt.zero_grad()
        _backward(model, x, y)
        for k, p in enumerate(model.parameters()):
            params.grad_of(f"p{k}")[...] = p.grad.float().numpy()
        opt.step()
        core.step()
    storage = core._storage
    offset = 0
    for k, p in enumerate(model.parameters()):
        n = p.numel()
        got = p.detach().float().numpy()
        np.testing.assert_array_equal(got, np.asarray(params[f"p{k}"], np.float32))
        state = opt.state[p]
        first = int(np.searchsorted(storage.blocks, offset))
        for row, row_name in enumerate(core.rule.state):
            codes, absmax = state[row_name], state[row_name + ".absmax"]
            assert codes.dtype == torch.uint8 and tuple(codes.shape) == tuple(p.shape)
            assert absmax.dtype == torch.float32 and absmax.numel() == -(-n // q.BLOCK)
            np.testing.assert_array_equal(codes.numpy().reshape(-1), storage.buffer[row, offset:offset + n])
            np.testing.assert_array_equal(absmax.numpy(), storage.absmax[row, first:first + absmax.numel()])
            np.testing.assert_array_equal(state[row_name + ".map"].numpy(), q.row_codecs((row_name,))[0][0])
        offset += n
    assert opt.state[next(model.parameters())]["exp_avg.absmax" if "exp_avg" in core.rule.state
                                               else core.rule.state[0] + ".absmax"].numel() == 2


def test_int8_state_is_live_and_trains_like_float32():
    model, x, y = _model()
    twin, _, _ = _model()
    opt = ft.AdamW(model.parameters(), lr=1e-2, state_dtype="int8")
    ref = ft.AdamW(twin.parameters(), lr=1e-2)
    _train(model, opt, x, y, 40)
    _train(twin, ref, x, y, 40)
    with torch.no_grad():
        first = ((_model()[0](x) - y) ** 2).mean().item()
        loss, ref_loss = ((model(x) - y) ** 2).mean().item(), ((twin(x) - y) ** 2).mean().item()
    assert loss < 0.8 * first and abs(loss - ref_loss) < 0.02 * first
    p = next(model.parameters())
    core = opt._slices[0].core
    opt.state[p]["exp_avg"].zero_()  # live: the kernels' codes change with the view
    opt.state[p]["exp_avg.absmax"].fill_(2.0)
    assert not core._storage.buffer[0, :p.numel()].any() and np.all(core._storage.absmax[0, :2] == 2.0)


def test_int8_state_dicts_continue_bit_for_bit_through_torchs_load():
    # torch's load casts every state tensor to a float parameter's dtype; the codes, absmax
    # and map must reach the flat state as saved, for float32 and bfloat16 parameters
    for dtype in (torch.float32, torch.bfloat16):
        model, x, y = _model(dtype)
        opt = ft.Adam(model.parameters(), lr=1e-2, state_dtype="int8")
        _train(model, opt, x, y, 3)
        saved = copy.deepcopy(opt.state_dict())
        values = [p.detach().clone() for p in model.parameters()]
        assert saved["state"][0]["exp_avg"].dtype == torch.uint8
        _train(model, opt, x, y, 3)
        resumed, _, _ = _model(dtype)
        with torch.no_grad():
            for p, value in zip(resumed.parameters(), values):
                p.copy_(value)
        again = ft.Adam(resumed.parameters(), lr=1e-2, state_dtype="int8")
        again.load_state_dict(saved)
        r = next(resumed.parameters())
        assert again.state[r]["exp_avg.absmax"].dtype == torch.float32
        assert torch.equal(again.state[r]["exp_avg.absmax"], saved["state"][0]["exp_avg.absmax"])
        _train(resumed, again, x, y, 3)
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


def test_float32_state_dicts_are_quantized_on_load_and_int8_ones_decoded():
    model, x, y = _model()
    theirs = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, theirs, x, y, 3)
    p = next(model.parameters())
    mine = ft.AdamW(model.parameters(), lr=1e-2, state_dtype="int8")
    mine.load_state_dict(theirs.state_dict())
    for name in ("exp_avg", "exp_avg_sq"):
        values = theirs.state[p][name].numpy().reshape(1, -1)
        codes, absmax = q.encode_reference(values, np.array([0, 2048, p.numel()], np.uint64), (name,))
        np.testing.assert_array_equal(mine.state[p][name].numpy().reshape(-1), codes[0])
        np.testing.assert_array_equal(mine.state[p][name + ".absmax"].numpy(), absmax[0])
    assert mine.state[p]["step"] == 3
    # and back: an int8 state dict into float32 (and bfloat16) state is decoded, not copied as numbers
    for state_dtype in (None, "bfloat16"):
        plain = ft.AdamW(model.parameters(), lr=1e-2, state_dtype=state_dtype)
        plain.load_state_dict(mine.state_dict())
        decoded = q.decode_int8(mine.state[p]["exp_avg"].numpy().reshape(1, -1),
                                mine.state[p]["exp_avg.absmax"].numpy().reshape(1, -1),
                                np.array([0, 2048, p.numel()], np.uint64), ("exp_avg",))[0]
        got = plain.state[p]["exp_avg"].float().numpy().reshape(-1)
        if state_dtype is None:
            np.testing.assert_array_equal(got, decoded)
        else:
            np.testing.assert_array_equal(got, torch.from_numpy(decoded).bfloat16().float().numpy())
        assert "exp_avg.absmax" not in plain.state[p]


def test_reset_state_and_new_momentum_keep_int8_state_right():
    model, x, y = _model()
    opt = ft.Adagrad(model.parameters(), lr=0.05, initial_accumulator_value=0.25, state_dtype="int8")
    p = next(model.parameters())
    _train(model, opt, x, y, 2)
    opt.state.clear()  # starts afresh: the accumulator at its initial value again, encoded
    opt.zero_grad()
    _backward(model, x, y)
    with torch.no_grad():
        expected = 0.25 + p.grad ** 2
    opt.step()
    absmax = opt.state[p]["sum.absmax"]
    decoded = q.decode_int8(opt.state[p]["sum"].numpy().reshape(1, -1), absmax.numpy().reshape(1, -1),
                            np.array([0, 2048, p.numel()], np.uint64), ("sum",))[0]
    np.testing.assert_allclose(decoded, expected.numpy().reshape(-1), rtol=0.08)
    assert opt.state[p]["step"] == 1
    # SGD: a scheduler moving momentum off 0 builds a core with a momentum buffer, int8 too,
    # which then holds what float32 state's does, to the quantization's resolution
    buffers = {}
    for state_dtype in ("int8", None):
        model, x, y = _model()
        sgd = ft.SGD(model.parameters(), lr=0.05, state_dtype=state_dtype)
        _train(model, sgd, x, y, 1)
        sgd.param_groups[0]["momentum"] = 0.9
        _train(model, sgd, x, y, 2)
        p = next(model.parameters())
        state = sgd.state[p]
        buffers[state_dtype] = _decode(state, "momentum_buffer", p) if state_dtype else \
            state["momentum_buffer"].numpy().reshape(-1)
    assert state["momentum_buffer"].dtype == torch.float32 and "step" not in sgd.state[p]
    scale = np.abs(buffers[None]).max()
    assert scale > 0 and np.abs(buffers["int8"] - buffers[None]).max() < 0.02 * scale


def _decode(state, name, p):
    """A parameter's int8 state row ``name`` decoded from its codes and absmax."""
    return q.decode_int8(state[name].numpy().reshape(1, -1), state[name + ".absmax"].numpy().reshape(1, -1),
                         np.append(np.arange(0, p.numel(), q.BLOCK), p.numel()).astype(np.uint64), (name,))[0]


def test_each_parameter_shows_its_own_blocks_in_every_layout():
    # two groups, empty parameters at a group's start and end, a weight of two blocks, and a
    # parameter that skips steps: each parameter's codes and absmax decode to exactly the
    # core's state there, and each absmax is its block's largest decoded magnitude
    torch.manual_seed(3)
    big, small, empty = (torch.nn.Parameter(torch.randn(*shape)) for shape in ((2049,), (5,), (0,)))
    tail, lone = torch.nn.Parameter(torch.randn(0, 3)), torch.nn.Parameter(torch.randn(4096))
    opt = ft.Adam([{"params": [empty, big, small, tail]}, {"params": [lone], "lr": 1e-3}], lr=1e-2,
                  state_dtype="int8")
    for step in range(3):
        opt.zero_grad()
        for param in (empty, big, small, tail, lone):
            if param is not small or step != 1:  # small skips step 2
                param.grad = torch.randn_like(param)
        opt.step()
    layout = [(piece.core, [e.param for e in piece.entries]) for piece in opt._slices]
    for core, members in layout:
        offset = 0
        for p in members:
            n = p.numel()
            state = opt.state[p]
            for name in ("exp_avg", "exp_avg_sq"):
                decoded = _decode(state, name, p)
                np.testing.assert_array_equal(decoded, core.state[name][offset:offset + n])
                tops = [np.abs(decoded[b:b + q.BLOCK]).max() for b in range(0, n, q.BLOCK)]
                np.testing.assert_array_equal(state[name + ".absmax"].numpy(), np.array(tops, np.float32))
            offset += n
    assert opt.state[small]["step"] == 2 and opt.state[big]["step"] == 3
    assert opt.state[big]["exp_avg.absmax"].numel() == 2 and opt.state[lone]["exp_avg.absmax"].numel() == 2
    assert opt.state[empty]["exp_avg.absmax"].numel() == 0 and opt.state[tail]["exp_avg"].shape == (0, 3)


def test_the_map_a_user_edits_is_their_own():
    # each published map is a copy: zeroing one optimizer's state leaves other optimizers, and
    # the map that loads are checked against, alone
    model, opt, saved = _saved_state()
    _, other, _ = _saved_state()
    for state in opt.state.values():
        for value in state.values():
            value.zero_()
    first = next(iter(other.state))
    assert other.state[first]["exp_avg.map"].abs().max() == 1.0
    ft.Adam(model.parameters(), lr=1e-2, state_dtype="int8").load_state_dict(saved)


def _saved_state(dtype=torch.float32):
    model, x, y = _model(dtype)
    opt = ft.Adam(model.parameters(), lr=1e-2, state_dtype="int8")
    _train(model, opt, x, y, 2)
    return model, opt, copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("exp_avg.absmax"), r"state 'exp_avg' of parameter 0 holds int8 codes \(uint8\) but no float "
                                        r"'exp_avg.absmax'"),
    (lambda s: s["exp_avg.map"].mul_(1.5), r"state 'exp_avg.map' of parameter 0 is not fastopt's int8 map"),
    (lambda s: s.__setitem__("exp_avg.absmax", torch.ones(3)), r"state 'exp_avg.absmax' of parameter 0 has "
                                                                 r"shape \(3,\), expected \(2,\)"),
    (lambda s: s.__setitem__("exp_avg", s["exp_avg"].float()), r"state 'exp_avg.absmax' of parameter 0 belongs to "
                                                                  r"int8 codes, but state 'exp_avg' is not uint8"),
])
def test_undecodable_int8_state_dicts_are_refused_before_anything_changes(edit, message):
    model, opt, saved = _saved_state()
    edit(saved["state"][0])
    for target in (ft.Adam(model.parameters(), lr=1e-2, state_dtype="int8"), opt):
        before = {k: v.clone() for k, v in target.state[next(model.parameters())].items()}
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(saved)
        after = target.state[next(model.parameters())]
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_int8_refusals():
    with pytest.raises(ValueError, match=r"params\[0\] has dtype torch.float64; state_dtype='int8' takes float32"):
        ft.Adam(torch.nn.Linear(2, 2).double().parameters(), state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype must be None, 'bfloat16' or 'int8'.*state_dtype='INT8'"):
        ft.Adam(torch.nn.Linear(2, 2).parameters(), state_dtype="INT8")
    with pytest.raises(ValueError, match="state_dtype must be None, 'bfloat16' or 'int8'.*state_dtype='int4'"):
        ft.LAMB(torch.nn.Linear(2, 2).parameters(), state_dtype="int4")
    with pytest.raises(ValueError, match=r"params\[0\] is bfloat16; LAMB works on whole tensors"):
        ft.LAMB(torch.nn.Linear(2, 2).bfloat16().parameters(), state_dtype="int8")
    model, opt, saved = _saved_state()
    p = next(model.parameters())
    last = list(model.parameters())[-1]
    before = {k: v.clone() for k, v in opt.state[p].items()}
    # a new state whose last parameter has codes without their absmax: refused, and the first
    # parameter (absent from it, so reset were the new state taken) is left as it was
    opt.state = {last: {"exp_avg": opt.state[last]["exp_avg"].clone(), "step": torch.tensor(2.0)}}
    with pytest.raises(ValueError, match=r"optimizer.state 'exp_avg' of parameter 3 holds int8 codes \(uint8\) "
                                         r"but no float 'exp_avg.absmax'"):
        opt.step()
    assert all(torch.equal(before[k], opt._entries[0].state[k]) for k in opt._entries[0].state)
    assert opt._entries[0].steps == 2


def test_a_rule_changed_by_a_group_key_carries_the_int8_state_over():
    # amsgrad turned on after two steps: a new core, its exp_avg codes and absmax copied over
    runs = {}
    for state_dtype in ("int8", None):
        model, x, y = _model()
        opt = ft.Adam(model.parameters(), lr=1e-2, state_dtype=state_dtype)
        _train(model, opt, x, y, 2)
        opt.param_groups[0]["amsgrad"] = True
        _train(model, opt, x, y, 1)
        p = next(model.parameters())
        state = opt.state[p]
        if state_dtype is None:
            runs[state_dtype] = state["exp_avg"].numpy().reshape(-1)
        else:
            runs[state_dtype] = q.decode_int8(state["exp_avg"].numpy().reshape(1, -1),
                                              state["exp_avg.absmax"].numpy().reshape(1, -1),
                                              np.array([0, 2048, p.numel()], np.uint64), ("exp_avg",))[0]
            assert "max_exp_avg_sq.absmax" in state
    scale = np.abs(runs[None]).max()
    assert np.abs(runs["int8"] - runs[None]).max() < 0.02 * scale


def test_lamb_with_bfloat16_state_steps_as_the_core_optimizer_does():
    # bfloat16 state over float32 parameters (LAMB's other encoding): the same bits as fastopt.LAMB
    model, x, y = _model()
    start = [p.detach().clone() for p in model.parameters()]
    opt = ft.LAMB(model.parameters(), lr=1e-2, weight_decay=0.01, state_dtype="bfloat16", state_seed=8)
    shapes = {f"p{k}": tuple(p.shape) for k, p in enumerate(start)}
    params = FlatParams(shapes)
    for k, p in enumerate(start):
        params[f"p{k}"] = p.numpy()
    from fastopt import LAMB

    core = LAMB(params, lr=1e-2, weight_decay=0.01, state_dtype="bfloat16", state_seed=8)
    for _ in range(3):
        opt.zero_grad()
        _backward(model, x, y)
        for k, p in enumerate(model.parameters()):
            params.grad_of(f"p{k}")[...] = p.grad.numpy()
        opt.step()
        core.step()
    offset = 0
    for k, p in enumerate(model.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), params[f"p{k}"])
        state = opt.state[p]["exp_avg_sq"]
        assert state.dtype == torch.bfloat16
        np.testing.assert_array_equal(state.view(torch.int16).numpy().view(np.uint16).reshape(-1),
                                      core._storage.buffer[1, offset:offset + p.numel()])
        offset += p.numel()
