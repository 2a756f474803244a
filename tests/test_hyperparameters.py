"""Changing hyperparameters between steps: the fast path for values the kernel takes as
scalars or per-group values must give exactly what a fresh optimizer built with the new
config and loaded with the state gives, and a refused value must change nothing."""

import math

import dataclasses

import numpy as np
import pytest

from fastopt import LAMB, SGD, Adagrad, Adam, Adamax, AdamW, FlatParams, Lion, NAdam, ParamGroup, RAdam, RMSProp

from test_optimizers import OPTION_IDS, OPTIONS, SHAPES, make_params

GROUPS = [ParamGroup(["layer1.bias", "layer2.bias"], weight_decay=0.0),
          ParamGroup(["layer2.weight"], lr_factor=0.5, weight_decay=0.03)]

#: A new valid value for every field that does not select the rule (per class).
NEW_VALUES = {
    SGD: dict(lr=0.013, momentum=0.7, dampening=0.2, weight_decay=0.004, maximize=True),
    Adam: dict(lr=0.003, betas=(0.85, 0.95), eps=1e-5, weight_decay=0.02, maximize=True),
    AdamW: dict(lr=0.003, betas=(0.85, 0.95), eps=1e-5, weight_decay=0.02, maximize=True),
    RMSProp: dict(lr=0.002, alpha=0.9, eps=1e-5, weight_decay=0.02, momentum=0.6, maximize=True),
    Adagrad: dict(lr=0.05, lr_decay=0.1, weight_decay=0.02, initial_accumulator_value=2.0, eps=1e-5, maximize=True),
    Adamax: dict(lr=0.003, betas=(0.85, 0.95), eps=1e-5, weight_decay=0.02, maximize=True),
    RAdam: dict(lr=0.003, betas=(0.85, 0.95), eps=1e-5, weight_decay=0.02, maximize=True),
    NAdam: dict(lr=0.003, betas=(0.85, 0.95), eps=1e-5, weight_decay=0.02, momentum_decay=0.05, maximize=True),
    LAMB: dict(lr=0.003, betas=(0.85, 0.95), eps=1e-5, weight_decay=0.02, maximize=True),
    Lion: dict(lr=0.003, betas=(0.85, 0.95), weight_decay=0.02, maximize=True),
}


def new_values(cls, options):
    values = dict(NEW_VALUES[cls])
    if cls is SGD and (options.get("momentum", 0) == 0):
        values.pop("momentum")  # 0 -> 0.7 selects another rule: the full path, tested below
        values.pop("dampening")
    if cls is SGD and options.get("nesterov"):
        values.pop("dampening")  # Nesterov needs dampening 0
    if cls is RMSProp and options.get("momentum", 0) == 0:
        values.pop("momentum")
    return values


def grads(size, steps, seed=3):
    return np.random.default_rng(seed).standard_normal((steps, size))


def step(optimizer, g):
    optimizer.params.grad[:] = g
    optimizer.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, options", OPTIONS, ids=OPTION_IDS)
def test_each_change_equals_a_fresh_optimizer_with_the_new_config(cls, options, dtype):
    for name, value in new_values(cls, options).items():
        params = make_params(dtype)
        optimizer = cls(params, groups=GROUPS, **options)
        g = grads(params.size, 6).astype(dtype)
        for t in range(3):
            step(optimizer, g[t])
        if name == "lr":
            optimizer.lr = value
        else:
            optimizer.set_hyperparameters(**{name: value})
        assert getattr(optimizer.config, name) == value
        fresh = cls(make_params(dtype, seed=9), groups=GROUPS, **{**options, name: value})
        fresh.params.data[:] = params.data
        fresh.load_state_dict(optimizer.state_dict())
        assert fresh.config == optimizer.config
        for t in range(3, 6):
            step(optimizer, g[t])
            step(fresh, g[t])
        assert np.array_equal(fresh.params.data, params.data), f"{name}={value!r}"
        for state_name, buffer in optimizer.state.items():
            assert np.array_equal(fresh.state[state_name], buffer), (name, state_name)


@pytest.mark.parametrize("cls, options, change", [
    (NAdam, dict(lr=1e-2, weight_decay=0.1), dict(decoupled_weight_decay=True)),
    (RAdam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True), dict(decoupled_weight_decay=False)),
    (SGD, dict(lr=0.02, momentum=0.9), dict(nesterov=True)),
])
def test_a_rule_over_the_same_state_is_switched_as_a_fresh_optimizer(cls, options, change):
    params = make_params(np.float64)
    optimizer = cls(params, groups=GROUPS, **options)
    g = grads(params.size, 6)
    for t in range(3):
        step(optimizer, g[t])
    saved = optimizer.state_dict()
    optimizer.set_hyperparameters(**change)
    fresh = cls(FlatParams.wrap(params.data.copy(), np.zeros_like(params.data), dict(params.layout)),
                groups=GROUPS, **{**options, **change})
    fresh.load_state_dict({**saved, "config": dataclasses.asdict(fresh.config)})
    assert optimizer.rule is fresh.rule
    switched = cls(make_params(np.float32), **options)
    rule, config = switched.rule, switched.config
    with pytest.raises(ValueError, match="eps|lr"):  # refused after the rule check: nothing changes
        switched.set_hyperparameters(**change, eps=1e-50) if cls is not SGD else \
            switched.set_hyperparameters(**change, lr=1e39)
    assert switched.rule is rule and switched._plan.rule is rule and switched.config == config
    for t in range(3, 6):
        step(optimizer, g[t])
        step(fresh, g[t])
    assert np.array_equal(fresh.params.data, params.data)


def test_a_change_that_selects_another_rule_takes_the_full_path():
    params = make_params(np.float32)
    sgd = SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="needs different state"):
        sgd.set_hyperparameters(momentum=0.0)
    with pytest.raises(ValueError, match="needs different state"):
        SGD(params, lr=0.1).set_hyperparameters(momentum=0.9)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0 and dampening = 0"):
        SGD(params, lr=0.1, momentum=0.9, nesterov=True).set_hyperparameters(dampening=0.5)
    with pytest.raises(ValueError, match="needs different state"):
        Adam(params).set_hyperparameters(amsgrad=True)
    with pytest.raises(ValueError, match="needs different state"):
        RMSProp(params, momentum=0.5).set_hyperparameters(momentum=0)
    assert sgd.config.momentum == 0.9


BAD = [
    (SGD, dict(momentum=0.9), "lr", -0.1, ValueError, "lr must be a finite number >= 0"),
    (SGD, dict(momentum=0.9), "lr", math.nan, ValueError, "lr must be a finite number >= 0"),
    (SGD, dict(momentum=0.9), "lr", math.inf, ValueError, "lr must be a finite number >= 0"),
    (SGD, dict(momentum=0.9), "lr", True, TypeError, "lr must be a real number"),
    (SGD, dict(momentum=0.9), "lr", "0.1", TypeError, "lr must be a real number"),
    (SGD, dict(momentum=0.9), "momentum", -1.0, ValueError, "momentum must be a finite number >= 0"),
    (SGD, dict(momentum=0.9), "dampening", 1.5, ValueError, "dampening must lie in"),
    (Adam, {}, "betas", (0.9, 1.0), ValueError, "beta2 must lie in"),
    (Adam, {}, "betas", 0.9, ValueError, "betas must be a pair"),
    (Adam, {}, "eps", 0.0, ValueError, "eps must be a finite number > 0"),
    (AdamW, {}, "weight_decay", -0.1, ValueError, "weight_decay must be a finite number >= 0"),
    (RMSProp, {}, "alpha", 1.5, ValueError, "alpha must lie in"),
    (RMSProp, {}, "maximize", 1, TypeError, "maximize must be True or False"),
    (Adam, {}, "nonsense", 1.0, TypeError, "nonsense"),
]


@pytest.mark.parametrize("cls, options, name, value, error, message", BAD,
                         ids=[f"{cls.__name__}-{name}={value!r}" for cls, _, name, value, _, _ in BAD])
def test_a_refused_value_names_itself_and_changes_nothing(cls, options, name, value, error, message):
    params, untouched = make_params(np.float32), make_params(np.float32)
    optimizer, reference = cls(params, groups=GROUPS, **options), cls(untouched, groups=GROUPS, **options)
    g = grads(params.size, 4).astype(np.float32)
    step(optimizer, g[0])
    step(reference, g[0])
    config = optimizer.config
    with pytest.raises(error, match=message):
        if name == "lr":
            optimizer.lr = value
        else:
            optimizer.set_hyperparameters(**{name: value})
    assert optimizer.config == config
    for t in range(1, 4):
        step(optimizer, g[t])
        step(reference, g[t])
    assert np.array_equal(params.data, untouched.data)


def test_lr_takes_any_real_number_and_keeps_it_as_a_float():
    optimizer = Adam(make_params(np.float32))
    for value in (1, np.float32(0.5), np.float64(0.25), 0.125):
        optimizer.lr = value
        assert optimizer.lr == float(value) and type(optimizer.lr) is float
        assert optimizer.config.lr == float(value)


def test_the_config_read_after_a_fast_change_is_a_new_frozen_object():
    optimizer = Adam(make_params(np.float32), lr=0.1)
    before = optimizer.config
    optimizer.lr = 0.2
    optimizer.set_hyperparameters(betas=(0.5, 0.6))
    after = optimizer.config
    assert before.lr == 0.1 and before.betas == (0.9, 0.999)  # what a user held is unchanged
    assert after.lr == 0.2 and after.betas == (0.5, 0.6) and after == optimizer.config  # built when read
    with pytest.raises(AttributeError):
        after.lr = 0.3


def test_a_new_weight_decay_reaches_the_groups_that_take_the_default():
    params = FlatParams({"w": 4, "b": 2})
    optimizer = SGD(params, lr=1.0, weight_decay=0.0, groups=[ParamGroup(["b"], weight_decay=0.0)])
    params.data[:] = 1.0
    optimizer.set_hyperparameters(weight_decay=0.5)
    optimizer.step()  # zero gradient: only the decay moves w; b's group keeps its own 0
    assert params["w"].tolist() == [0.5] * 4 and params["b"].tolist() == [1.0, 1.0]
    assert optimizer.l2_penalty() == pytest.approx(0.5 / 2 * 4 * 0.25)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, options, field", [
    (SGD, dict(lr=0.02, momentum=0.9), "momentum"),
    (SGD, dict(lr=0.02, momentum=0.9, nesterov=True), "momentum"),
    (Adam, dict(lr=1e-2), "betas"),
    (AdamW, dict(lr=1e-2, amsgrad=True), "betas"),
    (RMSProp, dict(lr=1e-3, momentum=0.5, centered=True), "momentum"),
])
def test_set_momentum_equals_a_fresh_optimizer_with_that_momentum(cls, options, field, dtype):
    """The momentum a schedule cycles (Adam's beta1) reaches the kernel, as a fresh optimizer
    built with it would step."""
    params = make_params(dtype)
    optimizer = cls(params, groups=GROUPS, **options)
    g = grads(params.size, 6).astype(dtype)
    for t in range(3):
        step(optimizer, g[t])
    optimizer.set_momentum(0.6)
    new = (0.6, optimizer.config.betas[1]) if field == "betas" else 0.6
    assert getattr(optimizer.config, field) == new
    fresh = cls(make_params(dtype, seed=9), groups=GROUPS, **{**options, field: new})
    fresh.params.data[:] = params.data
    fresh.load_state_dict(optimizer.state_dict())
    for t in range(3, 6):
        step(optimizer, g[t])
        step(fresh, g[t])
    assert np.array_equal(fresh.params.data, params.data)


def test_a_scheduler_step_refused_for_its_momentum_changes_nothing():
    from fastopt import Scheduler, schedules

    optimizer = Adam(make_params(np.float32), lr=0.5)
    with pytest.raises(ValueError, match="beta1 must lie in"):
        Scheduler(optimizer, schedules.constant(0.01), momentum=schedules.constant(1.0))
    assert optimizer.lr == 0.5 and optimizer.config.betas == (0.9, 0.999)
