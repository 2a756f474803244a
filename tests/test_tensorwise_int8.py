"""int8 and bfloat16 state for the rules with per-tensor sums (LAMB): the fused steps against
their composition (decode, the float32 rule kernel, encode or round stochastically) bit for
bit, the optimizer's state dicts across encodings, its trajectory against float32 state, and
what stays refused."""



import numpy as np
import pytest

from fastopt import LAMB, FlatParams
from fastopt.kernels import quantized as q
from fastopt.kernels import tensorwise

from .kernel_cases import TENSORWISE, make_tensor_case


@pytest.mark.parametrize("name", TENSORWISE)
@pytest.mark.parametrize("sizes, skipped", [([1], ()), ([2049, 7, 0, 5000], (3,)), ([300] * 9, (4,)),
                                             ([4097, 3], ())])
def test_the_int8_step_is_decode_then_the_float32_step_then_encode(name, sizes, skipped):
    # The blocks are the rule's tiles; the step is the float32 kernel's from the decoded state
    # (its direction fresh in both passes), and only the state kept is encoded.
    case, _ = make_tensor_case(name, sizes, np.float32, np.random.default_rng(sum(sizes)), skipped)
    rule, bounds, groups = case.rule, case.bounds, case.groups
    codes, absmax = q.encode_reference(case.state, bounds, rule.state)
    codes[:, :1] = 0  # an element exactly zero
    grad = case.grad.copy()
    if sizes[0] == 4097:
        grad[4098] = np.nan  # the last tensor's (one block) direction and state turn NaN
    tables = (case.tile_tensor, case.tensor_tiles)
    expected_state = q.decode_int8(codes, absmax, bounds, rule.state)
    expected_param = case.param.copy()
    tensorwise.kernel(rule)(expected_param, expected_state, grad, bounds, groups, case.table, case.scalars,
                            *tables, case.partial.copy(), case.sums.copy())
    active = np.repeat(groups >= 0, np.diff(bounds.astype(np.int64)))
    expected_codes, expected_absmax = q.encode_reference(expected_state, bounds, rule.state)
    expected_codes[:, ~active] = codes[:, ~active]
    expected_absmax[:, groups < 0] = absmax[:, groups < 0]
    for parallel in (True, False):
        p, c, a = case.param.copy(), codes.copy(), absmax.copy()
        kernel = q.encoded_tensorwise_kernel(rule, "int8", parallel)
        kernel(p, c, a, grad, bounds, groups, case.table, case.scalars, *[np.uint64(0)] * 4, *tables,
               case.partial.copy(), case.sums.copy())
        np.testing.assert_array_equal(p, expected_param)
        np.testing.assert_array_equal(c, expected_codes)
        np.testing.assert_array_equal(a, expected_absmax)
    if sizes[0] == 4097:
        assert np.isnan(p[4097:]).all() and np.isnan(a[:, -1]).all() and not np.isnan(p[:4097]).any()


@pytest.mark.parametrize("name", TENSORWISE)
@pytest.mark.parametrize("sizes, skipped, offset", [([1], (), 0), ([2049, 7, 0, 5000], (3,), 3),
                                                     ([300] * 9, (4,), 2**33 + 1)])
def test_the_bfloat16_step_is_decode_then_the_float32_step_then_stochastic_rounding(name, sizes, skipped, offset):
    case, _ = make_tensor_case(name, sizes, np.float32, np.random.default_rng(sum(sizes) + 1), skipped)
    rule, bounds, groups = case.rule, case.bounds, case.groups
    bits = q.round_bfloat16_nearest(case.state)
    key = (np.uint64(0xC0FFEE), np.uint64(7), np.uint64(12))
    tables = (case.tile_tensor, case.tensor_tiles)
    expected_state = q.decode_bfloat16(bits)
    expected_param = case.param.copy()
    tensorwise.kernel(rule)(expected_param, expected_state, case.grad, bounds, groups, case.table, case.scalars,
                            *tables, case.partial.copy(), case.sums.copy())
    halves = q.random_halves(case.param.size, *key, len(rule.state), offset)
    expected_bits = q.round_bfloat16_reference(expected_state, halves)
    active = np.repeat(groups >= 0, np.diff(bounds.astype(np.int64)))
    expected_bits[:, ~active] = bits[:, ~active]
    for parallel in (True, False):
        p, b = case.param.copy(), bits.copy()
        q.encoded_tensorwise_kernel(rule, "bfloat16", parallel)(p, b, b, case.grad, bounds, groups, case.table,
                                                                case.scalars, *key, np.uint64(offset), *tables,
                                                                case.partial.copy(), case.sums.copy())
        np.testing.assert_array_equal(p, expected_param)
        np.testing.assert_array_equal(b, expected_bits)


SHAPES = {"w": (40, 120), "b": 40, "empty": 0, "v": (3, 40), "c": 3}


def _params(seed=0):
    params = FlatParams(SHAPES)
    params.data[:] = np.random.default_rng(seed).standard_normal(params.size)
    return params


def _run(opt, steps, start=0):
    for t in range(start, start + steps):
        opt.params.grad[:] = np.random.default_rng(100 + t).standard_normal(opt.params.size) * 0.1 + 0.02
        opt.step()


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_lamb_state_dicts_continue_and_move_between_encodings(state_dtype):
    opt = LAMB(_params(), lr=1e-2, weight_decay=0.01, state_dtype=state_dtype, state_seed=4)
    if state_dtype == "bfloat16":
        _run(opt, 4)
        saved = opt.state_dict()
        assert saved["state"]["exp_avg"].dtype == np.uint16 and saved["state_seed"] == 4
        restored = LAMB(_params(1), lr=1e-2, weight_decay=0.01, state_dtype="bfloat16")  # the seed comes with it
        restored.params.data[:] = opt.params.data
        restored.load_state_dict(saved)
        _run(opt, 4, start=4)
        _run(restored, 4, start=4)
        np.testing.assert_array_equal(opt.params.data, restored.params.data)
        np.testing.assert_array_equal(restored.state_dict()["state"]["exp_avg_sq"], opt.state_dict()["state"]["exp_avg_sq"])
        back = LAMB(_params(), lr=1e-2, state_dtype="int8")
        back.load_state_dict(saved)  # bfloat16 -> int8: decoded, then encoded
        values = q.decode_bfloat16(saved["state"]["exp_avg"])
        codes, _ = q.encode_reference(values[None], back._storage.blocks, ("exp_avg",))
        np.testing.assert_array_equal(back.state_dict()["state"]["exp_avg"], codes[0])
        return
    assert opt.state_dtype == "int8" and opt._storage.nbytes == 2 * (_params().size + 6 * 4)  # w: 3 blocks, then 1 a tensor
    _run(opt, 4)
    saved = opt.state_dict()
    assert saved["state_dtype"] == "int8" and saved["state"]["exp_avg"].dtype == np.uint8
    restored = LAMB(_params(1), lr=1e-2, weight_decay=0.01, state_dtype="int8")
    restored.params.data[:] = opt.params.data
    restored.load_state_dict(saved)
    _run(opt, 4, start=4)
    _run(restored, 4, start=4)
    np.testing.assert_array_equal(opt.params.data, restored.params.data)
    # int8 -> float32 decodes; float32 -> int8 encodes (as the kernels would)
    plain = LAMB(_params(), lr=1e-2, weight_decay=0.01)
    plain.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(plain.state["exp_avg_sq"], opt.state["exp_avg_sq"])
    back = LAMB(_params(), lr=1e-2, weight_decay=0.01, state_dtype="int8")
    back.load_state_dict(plain.state_dict())
    np.testing.assert_array_equal(back.state_dict()["state"]["exp_avg"], opt.state_dict()["state"]["exp_avg"])


def test_a_quantized_lamb_trajectory_stays_near_the_float32_one():
    """1,000 LAMB steps on a least-squares problem (noisy minibatch gradients), the weights a
    matrix and a bias: int8 state keeps them within 1 % (relative L2 distance) of float32
    state's, bfloat16 within 0.5 %. Measured: 0.30 % and 0.14 %."""
    rng = np.random.default_rng(5)
    features, outputs, samples = 60, 4, 2000
    x = rng.standard_normal((samples, features)).astype(np.float32)
    truth = rng.standard_normal((features, outputs)).astype(np.float32)
    y = x @ truth + 0.1 * rng.standard_normal((samples, outputs)).astype(np.float32)
    finals = {}
    for state_dtype in (None, "int8", "bfloat16"):
        params = FlatParams({"w": (features, outputs), "b": outputs})
        params["w"][:] = 0.1
        opt = LAMB(params, lr=5e-3, state_dtype=state_dtype)
        batches = np.random.default_rng(6)
        for _ in range(1000):
            rows = batches.integers(0, samples, 64)
            error = x[rows] @ params["w"] + params["b"] - y[rows]
            params.grad_of("w")[:] = x[rows].T @ error / 64
            params.grad_of("b")[:] = error.mean(axis=0)
            opt.step()
        finals[state_dtype] = params.data.astype(np.float64)
    reference = finals[None]
    assert np.linalg.norm(reference[:-outputs].reshape(features, outputs) - truth) < 0.05 * np.linalg.norm(truth)
    distance = {k: np.linalg.norm(v - reference) / np.linalg.norm(reference) for k, v in finals.items()}
    assert distance["int8"] < 0.01 and distance["bfloat16"] < 0.005, distance


def test_what_lamb_muon_and_adafactor_refuse():
    with pytest.raises(ValueError, match="state_dtype='int8' needs float32 parameters"):
        LAMB(FlatParams(SHAPES, dtype=np.float64), state_dtype="int8")
    with pytest.raises(ValueError, match="LAMB works on whole tensors and does not take bfloat16"):
        LAMB(FlatParams(SHAPES, dtype="bfloat16"), state_dtype="int8")
    # a state dict in an encoding the loading rule lacks
    from fastopt import Muon

    saved = Muon(FlatParams({"w": (3, 3)})).state_dict()
    saved["state_dtype"] = "int8"
    target = Muon(FlatParams({"w": (3, 3)}))
    with pytest.raises(ValueError, match="state_dict holds int8 state, which muon_nesterov_step does not take"):
        target.load_state_dict(saved)
