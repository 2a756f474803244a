"""fastopt.torch against torch.optim itself: a real torch model (conv and linear layers, three
parameter groups, a frozen parameter, one whose gradient stays None) trained with each class
and torch's own schedulers, state dicts moved both ways, and what torch users do around a step
(zero_grad either way, GradScaler, clip_grad_norm_, closures, add_param_group)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402

STEPS = 60


class Net(torch.nn.Module):
    """Conv + linear layers on 8x8 images; ``frozen`` takes part in the forward pass without a
    gradient, ``unused`` never does, so its gradient stays None."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.hidden = torch.nn.Linear(4 * 6 * 6, 12)
        self.out = torch.nn.Linear(12, 3)
        self.frozen = torch.nn.Parameter(torch.randn(12))
        self.frozen.requires_grad_(False)
        self.unused = torch.nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.out(torch.tanh(self.hidden(h)) * self.frozen)


def groups(model, options):
    return [
        {"params": list(model.conv.parameters())},
        {"params": [model.hidden.weight, model.hidden.bias], "lr": options["lr"] * 0.5, "weight_decay": 0.0},
        {"params": [model.out.weight, model.out.bias, model.frozen, model.unused], "lr": options["lr"] * 2},
    ]


CLASSES = {
    "SGD": dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "SGD-nesterov": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, maximize=False),
    "SGD-plain": dict(lr=0.05, weight_decay=1e-3),
    "Adam": dict(lr=1e-2, weight_decay=1e-3),
    "Adam-amsgrad": dict(lr=1e-2, amsgrad=True, betas=(0.8, 0.99)),
    "AdamW": dict(lr=1e-2, weight_decay=0.05),
    "AdamW-amsgrad-maximize": dict(lr=1e-2, amsgrad=True, maximize=True),
    "RMSprop": dict(lr=1e-3, weight_decay=1e-3),
    "RMSprop-centered-momentum": dict(lr=1e-3, centered=True, momentum=0.5),
    "Adagrad": dict(lr=0.05, lr_decay=1e-3, weight_decay=1e-3, initial_accumulator_value=0.1),
    "Adamax": dict(lr=1e-2, weight_decay=1e-3),
    "Adamax-maximize": dict(lr=1e-2, betas=(0.8, 0.99), maximize=True),
    "RAdam": dict(lr=1e-2, weight_decay=1e-3),
    "RAdam-decoupled": dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True),
    "NAdam": dict(lr=1e-2, weight_decay=1e-3, momentum_decay=0.02),
    "NAdam-decoupled-maximize": dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, maximize=True),
}


def has_momentum(name, options):
    return name.startswith(("Adam", "RAdam", "NAdam")) or options.get("momentum", 0) > 0


def scheduler(kind, optimizer, name, options):
    schedulers = torch.optim.lr_scheduler
    if kind == "one_cycle":
        return schedulers.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                     total_steps=STEPS + 1, cycle_momentum=has_momentum(name, options))
    if kind == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=20, eta_min=1e-4)
    return schedulers.StepLR(optimizer, step_size=7, gamma=0.5)


def data(steps=STEPS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, 6, 1, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (steps, 6), generator=generator)
    return x, y


def twins(seed=0):
    torch.manual_seed(seed)
    model = Net().double()
    return model, copy.deepcopy(model)


def build(module, name, model, options, reference=False):
    cls = getattr(module, name.split("-")[0])
    extra = {"foreach": False} if reference else {}
    return cls(groups(model, options), **options, **extra)


def train(model, optimizer, sched, x, y, steps, zero="optimizer"):
    loss_fn = torch.nn.CrossEntropyLoss()
    for t in range(steps):
        if zero == "optimizer":
            optimizer.zero_grad()
        else:
            model.zero_grad()
        loss_fn(model(x[t]), y[t]).backward()
        optimizer.step()
        if sched is not None:
            sched.step()


def assert_close(a, b, rtol=1e-10):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        scale = torch.clamp(q.detach().abs(), min=1e-3)
        error = ((p.detach() - q.detach()).abs() / scale).max().item()
        assert error <= rtol, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("kind", ["one_cycle", "cosine", "step"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_trajectory_equals_torch_optim_with_its_schedulers(name, kind):
    options = CLASSES[name]
    ours, theirs = twins()
    frozen, unused = ours.frozen.detach().clone(), ours.unused.detach().clone()
    optimizer, reference = build(ft, name, ours, options), build(torch.optim, name, theirs, options, True)
    x, y = data()
    train(ours, optimizer, scheduler(kind, optimizer, name, options), x, y, STEPS)
    train(theirs, reference, scheduler(kind, reference, name, options), x, y, STEPS)
    assert_close(ours, theirs)
    assert torch.equal(ours.frozen, frozen) and torch.equal(ours.unused, unused)
    assert ours.unused.grad is None
    # torch's state: every parameter that stepped (Adagrad: every parameter, from construction)
    assert stateful(optimizer) == stateful(reference)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in reference.param_groups]


@pytest.mark.parametrize("name", ["SGD", "Adam-amsgrad", "AdamW", "RMSprop-centered-momentum", "Adagrad", "Adamax",
                                  "RAdam-decoupled", "NAdam"])
def test_state_dicts_move_between_torch_and_fastopt(name):
    """torch -> fastopt -> torch, each half-way through, continues as torch alone does."""
    options = CLASSES[name]
    x, y = data()
    alone, _ = twins()
    reference = build(torch.optim, name, alone, options, True)
    train(alone, reference, None, x, y, STEPS)

    first, _ = twins()
    torch_optimizer = build(torch.optim, name, first, options, True)
    train(first, torch_optimizer, None, x[:20], y[:20], 20)
    second = copy.deepcopy(first)
    ours = build(ft, name, second, options)
    ours.load_state_dict(torch_optimizer.state_dict())
    train(second, ours, None, x[20:40], y[20:40], 20)
    third = copy.deepcopy(second)
    back = build(torch.optim, name, third, options, True)
    back.load_state_dict(ours.state_dict())
    train(third, back, None, x[40:], y[40:], 20)
    assert_close(third, alone)


def test_model_zero_grad_and_optimizer_zero_grad_both_work():
    x, y = data()
    results = []
    for zero in ("optimizer", "model"):
        model, _ = twins()
        train(model, ft.AdamW(model.parameters(), lr=1e-2), None, x, y, 20, zero=zero)
        results.append(model)
    theirs, _ = twins()
    train(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False), None, x, y, 20)
    assert_close(results[0], theirs)
    assert_close(results[1], theirs)


def test_parameters_are_views_of_one_flat_buffer_and_grads_stay_attached():
    model, _ = twins()
    optimizer = ft.AdamW(model.parameters())
    x, y = data()
    torch.nn.functional.cross_entropy(model(x[0]), y[0]).backward()
    optimizer.step()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x[1]), y[1]).backward()
    bases = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(bases) == 1  # float64, CPU: one buffer
    grads = {p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None}
    assert len(grads) == 1
    assert any(p is model.conv.weight for p in optimizer.param_groups[0]["params"])  # the same objects


def test_a_parameter_without_a_gradient_for_a_while_keeps_its_own_step_count():
    """torch counts steps per parameter: one left out of some steps gets its own bias
    corrections later (a separate kernel call for that step count)."""
    x, y = data()
    runs = []
    for module in (ft, torch.optim):
        model, _ = twins()
        extra = {"foreach": False} if module is torch.optim else {}
        optimizer = module.Adam(model.parameters(), lr=1e-2, **extra)
        for t in range(12):
            optimizer.zero_grad()
            # hidden gets no gradient at steps 4-7 (after zero_grad, as if None) and 10
            model.hidden.requires_grad_(not (4 <= t < 8 or t == 10))
            torch.nn.functional.cross_entropy(model(x[t]), y[t]).backward()
            optimizer.step()
        runs.append(model)
    assert_close(*runs)


@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
def test_nadam_keeps_each_parameters_mu_product_as_torch(default_dtype):
    """NAdam's product of momentum factors is per parameter in torch: one that skips steps, or
    is stepped while beta1 changes, has its own, kept in torch's scalar dtype (float32 unless
    the default dtype is float64) and rounded there at each step."""
    x, y = data()
    optimizers = []

    def build(module, model, extra):
        optimizers.append(module.NAdam(model.parameters(), lr=1e-2, momentum_decay=0.05, **extra))
        return optimizers[-1]

    def drive(model, optimizer, t):
        optimizer.zero_grad()
        # hidden skips step 3 and conv step 9: from step 10 on both have the same step count
        # but products of different momentum factors (beta1 changes at step 7)
        model.hidden.requires_grad_(t != 3)
        model.conv.requires_grad_(t != 9)
        if t == 7:
            optimizer.param_groups[0]["betas"] = (0.6, 0.999)
        torch.nn.functional.cross_entropy(model(x[t]), y[t]).backward()
        optimizer.step()

    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        runs = both(build, drive, steps=16)
    finally:
        torch.set_default_dtype(previous)
    products = [[optimizer.state[p]["mu_product"] for p in (model.conv.weight, model.hidden.weight)]
                for optimizer, model in zip(optimizers, runs)]
    assert_close(*runs)
    for ours, theirs in zip(*products):
        assert ours.dtype == theirs.dtype == default_dtype and ours.item() == theirs.item()
    assert products[0][0].item() != products[0][1].item()


def test_grad_scaler_clip_grad_norm_and_closure():
    x, y = data()
    runs = []
    for module in (ft, torch.optim):
        model, _ = twins()
        extra = {"foreach": False} if module is torch.optim else {}
        optimizer = module.AdamW(model.parameters(), lr=1e-2, **extra)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for t in range(10):
            def closure(t=t):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[t]), y[t])
                loss.backward()
                return loss

            if t % 2:
                loss = optimizer.step(closure)
                assert torch.is_tensor(loss)
            else:
                optimizer.zero_grad()
                scaler.scale(torch.nn.functional.cross_entropy(model(x[t]), y[t])).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                scaler.step(optimizer)
                scaler.update()
        runs.append(model)
    assert_close(*runs)


def test_add_param_group_follows_torch():
    x, y = data()
    runs = []
    for module in (ft, torch.optim):
        model, _ = twins()
        extra = {"foreach": False} if module is torch.optim else {}
        optimizer = module.SGD([model.conv.weight], lr=0.05, momentum=0.9, **extra)
        train(model, optimizer, None, x, y, 5)
        optimizer.add_param_group({"params": [model.hidden.weight, model.out.weight], "lr": 0.02})
        train(model, optimizer, None, x[5:], y[5:], 5)
        runs.append(model)
    assert_close(*runs)


def test_a_float32_cnn_on_digits_learns_as_well_as_with_torch():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    train_x, test_x, train_y, test_y = images[:1400], images[1400:], labels[:1400], labels[1400:]
    accuracies = {}
    for module in (ft, torch.optim):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 6 * 6, 10))
        optimizer = module.AdamW(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(1)
        for _ in range(8):
            for batch in torch.randperm(1400, generator=generator).split(32):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
                optimizer.step()
        with torch.no_grad():
            accuracies[module.__name__] = (model(test_x).argmax(1) == test_y).float().mean().item()
    ours, theirs = accuracies["fastopt.torch"], accuracies["torch.optim"]
    assert ours >= 0.9 and ours >= theirs - 0.01, accuracies


def test_torch_schedulers_and_frameworks_see_an_optimizer():
    model, _ = twins()
    optimizer = ft.AdamW(model.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)  # needs betas in defaults
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["weight_decay"] == 1e-2


BAD = [
    (lambda ps: ft.SGD(ps, lr=-1), ValueError, "Invalid learning rate: -1"),
    (lambda ps: ft.SGD(ps, momentum=-1), ValueError, "Invalid momentum value: -1"),
    (lambda ps: ft.SGD(ps, nesterov=True), ValueError, "Nesterov momentum requires a momentum"),
    (lambda ps: ft.Adam(ps, betas=(1.0, 0.9)), ValueError, "Invalid beta parameter at index 0: 1.0"),
    (lambda ps: ft.Adam(ps, eps=-1), ValueError, "Invalid epsilon value: -1"),
    (lambda ps: ft.Adam(ps, eps=0.0), ValueError, "eps must be a finite number > 0"),
    (lambda ps: ft.AdamW(ps, weight_decay=-0.1), ValueError, "Invalid weight_decay value: -0.1"),
    (lambda ps: ft.RMSprop(ps, alpha=1.5), ValueError, "alpha must lie in"),
    (lambda ps: ft.Adam(ps, capturable=True), ValueError, "capturable=True is not supported"),
    (lambda ps: ft.SGD(ps, differentiable=True), ValueError, "differentiable=True is not supported"),
    pytest.param(lambda ps: ft.SGD([list(ps)[0]] * 2), ValueError, "give each parameter once",
                 marks=pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")),
    (lambda ps: ft.Adam(ps, lr=torch.tensor(0.1)), TypeError, "lr must be a float"),
    (lambda ps: ft.Adam([]), ValueError, "empty parameter list"),
    (lambda ps: ft.Adam([torch.zeros(3, dtype=torch.float16, requires_grad=True)]), TypeError,
     "float16"),
    (lambda ps: ft.Adam(ps, state_dtype="int4"), ValueError, "state_dtype must be None, 'bfloat16' or 'int8'"),
    (lambda ps: ft.Adam(ps, state_seed=-1), ValueError, "state_seed must be an int"),
]


@pytest.mark.parametrize("make, error, message", BAD,
                         ids=[case.values[2] if hasattr(case, "values") else case[2] for case in BAD])
def test_what_torch_or_fastopt_refuses_is_refused_by_name(make, error, message):
    model, _ = twins()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error, match=message):
        make(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_model_converted_after_construction_is_detected_at_the_next_step():
    model, _ = twins()
    optimizer = ft.Adam(model.parameters())
    model.float()
    torch.nn.functional.cross_entropy(model(data()[0][0].float()), data()[1][0]).backward()
    with pytest.raises(RuntimeError, match="build the optimizer again"):
        optimizer.step()


def both(build, drive, steps=8):
    """``drive(model, optimizer, t)`` for each step on twin models with fastopt.torch and
    torch.optim (``build(module, model, extra)`` makes the optimizer); the two models."""
    runs = []
    for module in (ft, torch.optim):
        model, _ = twins()
        optimizer = build(module, model, {"foreach": False} if module is torch.optim else {})
        for t in range(steps):
            drive(model, optimizer, t)
        runs.append(model)
    return runs


def plain_step(x, y):
    def drive(model, optimizer, t):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[t]), y[t]).backward()
        optimizer.step()
    return drive


@pytest.mark.parametrize("make", [
    lambda m, opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50),
    lambda m, opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=3),
])
@pytest.mark.parametrize("name", ["SGD", "RMSprop"])
def test_torch_schedulers_cycling_momentum_from_zero_follow_torch(make, name):
    """OneCycleLR and CyclicLR write a momentum into groups built with momentum 0 (the
    default): the group's rule changes (a momentum buffer appears) and the step follows."""
    x, y = data()
    schedulers = {}

    def build(module, model, extra):
        optimizer = getattr(module, name)(model.parameters(), lr=0.01, **extra)
        schedulers[module] = make(model, optimizer)
        return optimizer

    def drive(model, optimizer, t):
        plain_step(x, y)(model, optimizer, t)
        schedulers[ft if isinstance(optimizer, ft._FlatOptimizer) else torch.optim].step()

    assert_close(*both(build, drive))


def test_sgd_momentum_switched_on_mid_run_starts_its_buffer_as_torch():
    x, y = data()

    def drive(model, optimizer, t):
        if t == 3:
            optimizer.param_groups[0]["momentum"] = 0.9
        plain_step(x, y)(model, optimizer, t)

    assert_close(*both(lambda module, model, extra: module.SGD(model.parameters(), lr=0.05, **extra), drive))


def test_a_layer_frozen_then_thawed_trains_again():
    """Train, freeze a layer, add a group (the buffers are laid out again), thaw the layer:
    its gradients reach the step again, as in torch."""
    x, y = data()

    def drive(model, optimizer, t):
        if t == 2:
            model.hidden.requires_grad_(False)
        if t == 4:
            optimizer.add_param_group({"params": [model.unused], "lr": 0.01})
        if t == 5:
            model.hidden.requires_grad_(True)
        plain_step(x, y)(model, optimizer, t)

    build = lambda module, model, extra: module.Adam(  # noqa: E731
        [p for n, p in model.named_parameters() if n != "unused"], lr=1e-2, **extra)
    assert_close(*both(build, drive))


def test_a_parameter_appended_to_a_groups_list_is_stepped():
    x, y = data()

    def drive(model, optimizer, t):
        if t == 3:
            optimizer.param_groups[0]["params"].append(model.out.weight)
        plain_step(x, y)(model, optimizer, t)

    build = lambda module, model, extra: module.AdamW([model.conv.weight, model.hidden.weight], lr=1e-2, **extra)  # noqa: E731
    assert_close(*both(build, drive))


@pytest.mark.parametrize("reset", ["clear", "del", "new dict"])
def test_a_reset_state_starts_afresh_as_torch(reset):
    from collections import defaultdict

    x, y = data()

    def drive(model, optimizer, t):
        if t == 4:
            if reset == "clear":
                optimizer.state.clear()
            elif reset == "del":
                del optimizer.state[model.conv.weight]
            else:
                optimizer.state = defaultdict(dict)
        plain_step(x, y)(model, optimizer, t)

    assert_close(*both(lambda module, model, extra: module.Adam(model.parameters(), lr=1e-2, **extra), drive))


def test_a_groups_decoupled_weight_decay_follows_torch():
    x, y = data()

    def build(module, model, extra):
        return module.Adam([{"params": list(model.conv.parameters()), "decoupled_weight_decay": True},
                            {"params": list(model.hidden.parameters())}], lr=1e-2, weight_decay=0.5, **extra)

    assert_close(*both(build, plain_step(x, y)))


def test_pending_gradients_survive_a_new_group_and_zero_grad_keeps_assigned_ones():
    x, y = data()

    def drive(model, optimizer, t):
        if t == 2:  # backward, then a new group lays the buffers out again, then the step
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[t]), y[t]).backward()
            optimizer.add_param_group({"params": [model.unused], "lr": 0.1})
            optimizer.step()
            return
        if t == 4:  # an assigned gradient, zeroed (not None) by zero_grad(set_to_none=False)
            model.out.bias.grad = torch.ones_like(model.out.bias)
            optimizer.zero_grad(set_to_none=False)
            optimizer.step()
            return
        plain_step(x, y)(model, optimizer, t)

    build = lambda module, model, extra: module.AdamW(  # noqa: E731
        [p for n, p in model.named_parameters() if n != "unused"], lr=1e-2, weight_decay=0.1, **extra)
    assert_close(*both(build, drive))


def test_shared_parameters_stay_shared():
    model, _ = twins()
    model.share_memory()
    ft.SGD(model.parameters(), lr=0.1)
    assert all(p.is_shared() for p in model.parameters())


def test_a_new_hyperparameter_in_a_group_takes_effect_at_the_next_step():
    x, y = data()
    runs = []
    for module in (ft, torch.optim):
        model, _ = twins()
        extra = {"foreach": False} if module is torch.optim else {}
        optimizer = module.Adam(model.parameters(), lr=1e-2, **extra)
        train(model, optimizer, None, x, y, 3)
        optimizer.param_groups[0].update(betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1, lr=3e-3)
        train(model, optimizer, None, x[3:], y[3:], 3)
        runs.append(model)
    assert_close(*runs)


def test_step_hooks_run_as_in_torch():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    model, _ = twins()
    optimizer = ft.SGD(model.parameters(), lr=0.1)
    calls = []
    handles = [optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre")),
               optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post")),
               register_optimizer_step_post_hook(lambda opt, a, k: calls.append("global"))]
    x, y = data()
    train(model, optimizer, None, x, y, 2)
    for handle in handles:
        handle.remove()
    train(model, optimizer, None, x, y, 1)
    assert calls == ["pre", "post", "global"] * 2


def test_state_shows_the_live_step_count_and_state_views():
    model, _ = twins()
    optimizer = ft.Adam(model.parameters(), lr=1e-2)
    x, y = data()
    train(model, optimizer, None, x, y, 5)
    state = optimizer.state[model.conv.weight]
    assert state["step"].item() == 5.0 and state["exp_avg"].shape == model.conv.weight.shape
    train(model, optimizer, None, x, y, 2)
    assert optimizer.state[model.conv.weight]["step"].item() == 7.0
    assert model.unused not in optimizer.state  # never stepped: no state, as in torch


class PaperLion(torch.optim.Optimizer):
    """Lion as Chen et al. (2023) give it (Program 1), written with torch operations: the
    reference fastopt.torch.Lion is held to (torch has no Lion)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                update = torch.sign(beta1 * m + (1 - beta1) * p.grad)
                p -= group["lr"] * (update + group["weight_decay"] * p)
                m.mul_(beta2).add_((1 - beta2) * p.grad)


@pytest.mark.parametrize("kind", ["cosine", "one_cycle"])
def test_lion_follows_the_papers_rule(kind):
    options = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    ours, theirs = twins()
    optimizer = ft.Lion(groups(ours, options), **options)
    reference = PaperLion(groups(theirs, options), **options)
    x, y = data()
    train(ours, optimizer, scheduler(kind, optimizer, "Lion", options), x, y, STEPS)
    train(theirs, reference, scheduler(kind, reference, "Lion", options), x, y, STEPS)
    assert_close(ours, theirs)
    assert optimizer.state[ours.conv.weight]["step"] == STEPS


class PaperLAMB(torch.optim.Optimizer):
    """LAMB as You et al. (2020) give it (Algorithm 2, with bias correction), written with torch
    operations per parameter tensor: the reference fastopt.torch.LAMB is held to."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_((1 - beta1) * p.grad)
                v.mul_(beta2).add_((1 - beta2) * p.grad * p.grad)
                u = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + group["eps"]) + group["weight_decay"] * p
                theta_norm, u_norm = p.norm().item(), u.norm().item()
                ratio = theta_norm / u_norm if theta_norm > 0 and u_norm > 0 else 1.0
                p -= group["lr"] * ratio * u


@pytest.mark.parametrize("kind", ["cosine", "one_cycle"])
def test_lamb_follows_the_papers_rule(kind):
    """Per torch parameter, with three groups, a frozen and an unused parameter, and one
    parameter left without a gradient for a few steps (its own step count and norms)."""
    options = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01)
    runs = []
    for module in (ft, None):
        model, _ = twins()
        optimizer = (ft.LAMB if module is ft else PaperLAMB)(groups(model, options), **options)
        sched = scheduler(kind, optimizer, "LAMB", options)
        x, y = data()
        for t in range(STEPS):
            optimizer.zero_grad()
            model.hidden.requires_grad_(not 10 <= t < 14)
            torch.nn.functional.cross_entropy(model(x[t]), y[t]).backward()
            optimizer.step()
            sched.step()
        runs.append((model, optimizer))
    (ours, optimizer), (theirs, _) = runs
    assert_close(ours, theirs)
    assert optimizer.state[ours.conv.weight]["step"] == STEPS
    assert optimizer.state[ours.hidden.weight]["step"] == STEPS - 4


def stateful(optimizer):
    """The indices of the parameters with state in ``optimizer``'s state dict (fastopt.torch's
    plain SGD lists an empty state for each stepped parameter, torch's none)."""
    return {index for index, state in optimizer.state_dict()["state"].items() if state}


def test_adagrad_state_exists_from_construction_and_a_reset_refills_it():
    model, twin = twins()
    optimizer = ft.Adagrad(model.parameters(), lr=0.1, initial_accumulator_value=0.25)
    reference = torch.optim.Adagrad(twin.parameters(), lr=0.1, initial_accumulator_value=0.25)
    assert torch.equal(optimizer.state[model.conv.weight]["sum"], reference.state[twin.conv.weight]["sum"])
    assert stateful(optimizer) == stateful(reference) == set(range(len(list(model.parameters()))))
    x, y = data()
    train(model, optimizer, None, x, y, 3)
    del optimizer.state[model.out.bias]
    train(model, optimizer, None, x, y, 1)
    assert optimizer.state[model.out.bias]["step"] == 1
    bias_grad = model.out.bias.grad
    expected = 0.25 + bias_grad * bias_grad  # refilled at the initial value, then one step
    assert torch.allclose(optimizer.state[model.out.bias]["sum"], expected, rtol=1e-12)


def test_a_refused_state_dict_changes_nothing():
    """fastopt's checks run before torch's load replaces the groups and state: the optimizer
    goes on as before (it once kept the bad values and stepped nothing)."""
    model, twin = twins()
    optimizer, reference = ft.NAdam(model.parameters(), lr=1e-2), ft.NAdam(twin.parameters(), lr=1e-2)
    x, y = data()
    train(model, optimizer, None, x, y, 2)
    train(twin, reference, None, x, y, 2)
    for change, message in ((("param_groups", "momentum_decay", -1.0), "momentum_decay"),
                            (("param_groups", "betas", (1.5, 0.9)), "beta"),
                            (("state", "mu_product", "x"), "mu_product"),
                            (("state", "mu_product", torch.tensor(5.0)), "mu_product"),
                            (("state", "exp_avg", torch.zeros(3, 3)), "has shape")):
        saved = copy.deepcopy(optimizer.state_dict())
        where, key, value = change
        if where == "param_groups":
            saved["param_groups"][0][key] = value
        else:
            saved["state"][next(iter(saved["state"]))][key] = value
        with pytest.raises(ValueError, match=message):
            optimizer.load_state_dict(saved)
    train(model, optimizer, None, x[2:], y[2:], 3)
    train(twin, reference, None, x[2:], y[2:], 3)
    assert_close(model, twin, rtol=0.0)
    assert optimizer.state[model.conv.weight]["step"] == 5


def test_nadam_resumed_from_torch_keeps_mu_product_in_the_parameters_dtype():
    """torch casts a loaded mu_product to the parameter's dtype and multiplies it there; so
    does fastopt.torch, resumed from the same state dict."""
    x, y = data()
    source, _ = twins()
    options = dict(lr=1e-2, momentum_decay=0.05)
    first = torch.optim.NAdam(source.parameters(), foreach=False, **options)
    train(source, first, None, x, y, 2)
    runs = []
    for module in (ft, torch.optim):
        model, _ = twins()
        model.load_state_dict(source.state_dict())
        extra = {"foreach": False} if module is torch.optim else {}
        optimizer = module.NAdam(model.parameters(), **options, **extra)
        optimizer.load_state_dict(copy.deepcopy(first.state_dict()))
        train(model, optimizer, None, x[2:], y[2:], 40)
        runs.append((model, optimizer.state[model.conv.weight]["mu_product"]))
    (ours, our_product), (theirs, their_product) = runs
    assert_close(ours, theirs)
    assert our_product.dtype == their_product.dtype == torch.float64 and our_product.item() == their_product.item()


def test_adagrad_state_follows_torch_for_groups_added_later_and_after_a_reset():
    model, twin = twins()
    runs = []
    for module, net in ((ft, model), (torch.optim, twin)):
        optimizer = module.Adagrad([{"params": [net.conv.weight], "initial_accumulator_value": 0.5},
                                    {"params": [net.conv.bias]}], lr=0.1, initial_accumulator_value=0.1)
        optimizer.add_param_group({"params": [net.hidden.weight]})
        keys = [sorted(optimizer.state_dict()["state"])]
        train(net, optimizer, None, *data(), 2)
        optimizer.state.clear()
        keys.append(sorted(optimizer.state_dict()["state"]))  # the reset shows at once
        net.conv.requires_grad_(False)
        train(net, optimizer, None, *data(), 1)
        keys.append(sorted(optimizer.state_dict()["state"]))
        runs.append((net, keys, optimizer.state[net.hidden.weight]["step"].item()))
    (ours, our_keys, our_step), (theirs, their_keys, their_step) = runs
    assert our_keys == their_keys and our_step == their_step == 1.0
    assert_close(ours, theirs)
