"""Same hyperparameters, same gradients: the same trajectory as torch.optim.

Skipped when PyTorch is not installed (it is an optional extra).
"""

import dataclasses

import numpy as np
import pytest

from test_optimizers import GROUPS, OPTION_IDS, OPTIONS, Quadratic, make_params

torch = pytest.importorskip("torch")

TORCH_CLASS = {"SGD": "SGD", "Adam": "Adam", "AdamW": "AdamW", "RMSProp": "RMSprop"}


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


@pytest.mark.parametrize("cls, options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 2e-5), (np.float64, 1e-10)])
def test_trajectory_matches_torch_optim(cls, options, dtype, tolerance):
    steps = 200
    params = make_params(dtype)
    opt = cls(params, **options, groups=GROUPS)
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
