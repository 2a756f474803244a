"""Same hyperparameters, same gradients: the same trajectory as torch.optim.

Skipped when PyTorch is not installed (it is an optional extra).
"""

import dataclasses

import numpy as np
import pytest

import fastopt
from test_optimizers import GROUPS, OPTION_IDS, OPTIONS, Quadratic, make_params

torch = pytest.importorskip("torch")

TORCH_CLASS = {"SGD": "SGD", "Adam": "Adam", "AdamW": "AdamW", "RMSProp": "RMSprop", "Adagrad": "Adagrad",
               "Adamax": "Adamax", "NAdam": "NAdam", "RAdam": "RAdam"}
#: The options of every rule torch.optim has (Lion it has not: see test_optimizers.py).
TORCH_OPTIONS = [(cls, options) for cls, options in OPTIONS if cls.__name__ in TORCH_CLASS]
TORCH_OPTION_IDS = [OPTION_IDS[OPTIONS.index(entry)] for entry in TORCH_OPTIONS]


def torch_optimizer(opt, tensors):
    """A torch.optim optimizer with ``opt``'s hyperparameters and parameter groups."""
    config = dataclasses.asdict(opt.config)
    grouped = {name for group in opt.groups for name in group.params}
    param_groups = [{"params": [t for n, t in tensors.items() if n not in grouped]}]
    for group in opt.groups:
        entry = {"params": [tensors[n] for n in group.params], "lr": opt.lr * group.lr_factor}
        if group.weight_decay is not None:
            entry["weight_decay"] = group.weight_decay
        param_groups.append(entry)
    cls = getattr(torch.optim, TORCH_CLASS[type(opt).__name__])
    return cls(param_groups, foreach=False, **config)


@pytest.mark.parametrize("cls, options", TORCH_OPTIONS, ids=TORCH_OPTION_IDS)
@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 2e-5), (np.float64, 1e-10)])
def test_trajectory_matches_torch_optim(cls, options, dtype, tolerance):
    run_against_torch(cls, options, make_params(dtype), GROUPS, 200, tolerance)


#: Tensors of three ranks, for the rules added on the one-source spec (issue 20).
RANKS = {"conv.weight": (4, 3, 5), "fc.weight": (9, 7), "fc.bias": (7,)}
ADDED = [(cls, options) for cls, options in TORCH_OPTIONS if cls.__name__ in ("Adagrad", "Adamax", "NAdam", "RAdam")]


@pytest.mark.parametrize("cls, options", ADDED, ids=[OPTION_IDS[OPTIONS.index(entry)] for entry in ADDED])
@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_added_rules_match_torch_over_three_ranks(cls, options, dtype, tolerance):
    rng = np.random.default_rng(2)
    params = fastopt.FlatParams.from_arrays({n: rng.standard_normal(s) for n, s in RANKS.items()}, dtype=dtype)
    groups = [fastopt.ParamGroup(["fc.bias"], weight_decay=0.0), fastopt.ParamGroup(["conv.weight"], lr_factor=0.5)]
    run_against_torch(cls, options, params, groups, 300, tolerance)


def run_against_torch(cls, options, params, groups, steps, tolerance):
    # float64 runs against torch in float64 throughout: torch's NAdam keeps its product of
    # momentum factors in torch's default dtype (float32 rounding there moves a float64 run by
    # up to about 1e-7 over 200 steps; fastopt keeps it in float64).
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if params.dtype == np.float64 else torch.float32)
    try:
        _run_against_torch(cls, options, params, groups, steps, tolerance)
    finally:
        torch.set_default_dtype(default)


def _run_against_torch(cls, options, params, groups, steps, tolerance):
    opt = cls(params, **options, groups=groups)
    tensors = {name: torch.tensor(params[name].copy(), requires_grad=True) for name in params}
    reference = torch_optimizer(opt, tensors)
    problem = Quadratic(params.size, steps, opt.config.maximize)
    for t in range(steps):
        params.grad[:] = problem.grad(params.data.astype(np.float64), t)
        for name, tensor in tensors.items():
            tensor.grad = torch.from_numpy(params.grad_of(name).copy())
        opt.step()
        reference.step()
    theirs = np.concatenate([tensors[name].detach().numpy().ravel() for name in params])
    error = np.max(np.abs(params.data - theirs)) / np.max(np.abs(theirs))
    assert error <= tolerance
