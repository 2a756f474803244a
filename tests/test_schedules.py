"""Schedules against their formulas and against torch.optim.lr_scheduler; schedulers."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import SGD, Adam, AdamW, FlatParams, ReduceLROnPlateau, RMSProp, Scheduler, schedules as S

# -- the formulas at their boundaries ------------------------------------------------------------


def test_step_decay_drops_at_each_period_edge():
    s = S.step_decay(0.1, step_size=10, gamma=0.9)
    assert [s(t) for t in (0, 9, 10, 19, 20)] == [0.1, 0.1, 0.1 * 0.9, 0.1 * 0.9, 0.1 * 0.9**2]


def test_multi_step_counts_the_milestones_reached():
    s = S.multi_step(1.0, milestones=[3, 5], gamma=0.5)
    assert [s(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]


def test_exponential_smooth_and_staircase():
    assert S.exponential(2.0, 0.5, transition_steps=2)(3) == pytest.approx(2.0 * 0.5**1.5)
    assert S.exponential(2.0, 0.5, transition_steps=2, staircase=True)(3) == 1.0


def test_constant_linear_and_polynomial():
    assert [S.constant(1.0, factor=0.5, total_steps=2)(t) for t in range(4)] == [0.5, 0.5, 1.0, 1.0]
    lin = S.linear(1.0, start_factor=0.25, end_factor=1.0, total_steps=3)
    assert [lin(t) for t in (0, 1, 3, 100)] == [0.25, 0.5, 1.0, 1.0]
    poly = S.polynomial(1.0, total_steps=4, power=2.0, end_value=0.1)
    assert poly(0) == 1.0 and poly(2) == pytest.approx(0.9 * 0.25 + 0.1) and poly(4) == poly(99) == 0.1


def test_cosine_annealing_reaches_eta_min_at_t_max():
    s = S.cosine_annealing(1.0, T_max=10, eta_min=0.1)
    assert s(0) == 1.0 and s(5) == pytest.approx(0.55) and s(10) == pytest.approx(0.1)


def test_warm_restarts_restart_at_each_period():
    s = S.cosine_warm_restarts(1.0, T_0=3, T_mult=2)
    # periods of 3, 6, 12 steps: restarts at 3 and 9
    assert s(0) == s(3) == s(9) == 1.0
    assert s(2) == pytest.approx(0.25) and s(8) == pytest.approx((1 + math.cos(math.pi * 5 / 6)) / 2)


def test_cyclic_triangular2_halves_each_cycle():
    s = S.cyclic(0.0, 1.0, step_size_up=2, step_size_down=4, mode="triangular2")
    assert [s(t) for t in range(13)] == pytest.approx(
        [0, 0.5, 1, 0.75, 0.5, 0.25, 0, 0.25, 0.5, 0.375, 0.25, 0.125, 0])
    momentum = S.cyclic_momentum(S.cyclic(0.0, 1.0, step_size_up=2), 0.8, 0.9)
    assert [momentum(t) for t in range(5)] == pytest.approx([0.9, 0.85, 0.8, 0.85, 0.9])


def test_one_cycle_ends_and_holds_its_floor():
    s = S.one_cycle(1.0, total_steps=10, pct_start=0.3, div_factor=10, final_div_factor=100)
    assert s(0) == pytest.approx(0.1) and s(2) == pytest.approx(1.0)
    assert s(9) == pytest.approx(1e-3) and s(10) == s(1000) == s(9)


def test_warmup_then_schedule_and_composition():
    w = S.warmup(S.constant(1.0), steps=4, start_value=0.2)
    assert [w(t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    seq = S.sequence([S.constant(0.1), S.exponential(1.0, 0.5)], boundaries=[2])
    assert [seq(t) for t in range(5)] == [0.1, 0.1, 1.0, 0.5, 0.25]
    prod = S.product(S.constant(2.0), S.step_decay(1.0, 1, 0.5))
    assert [prod(t) for t in range(3)] == [2.0, 1.0, 0.5]


def test_evaluate_gives_an_array():
    np.testing.assert_array_equal(S.evaluate(S.multi_step(1.0, [1], 0.5), 3), [1.0, 0.5, 0.5])


# -- plain data in, plain data out -----------------------------------------------------------------

EXAMPLES = [
    S.constant(0.1, factor=0.5, total_steps=3), S.step_decay(0.1, 7, 0.8), S.multi_step(0.1, [5, 9]),
    S.exponential(0.1, 0.9, transition_steps=3, staircase=True), S.linear(0.1), S.polynomial(0.1, 20, 2.0),
    S.cosine_annealing(0.1, 15, 0.01), S.cosine_warm_restarts(0.1, 4, 2, 0.001),
    S.cyclic(0.01, 0.1, 3, 5, mode="exp_range", gamma=0.97), S.one_cycle(0.1, 30, three_phase=True),
    S.one_cycle_momentum(S.one_cycle(0.1, 30, anneal_strategy="linear")),
    S.warmup(S.cosine_annealing(0.1, 20), 5, 0.01),
    S.sequence([S.linear(0.1, total_steps=4), S.cosine_annealing(0.1, 10)], [4]),
    S.product(S.cosine_warm_restarts(1.0, 5), S.exponential(0.1, 0.99)),
]


@pytest.mark.parametrize("schedule", EXAMPLES, ids=lambda s: s.name)
def test_to_dict_round_trips_through_json(schedule):
    data = json.loads(json.dumps(schedule.to_dict()))
    rebuilt = S.from_dict(data)
    assert rebuilt == schedule
    np.testing.assert_array_equal(S.evaluate(rebuilt, 80), S.evaluate(schedule, 80))


# -- against PyTorch ----------------------------------------------------------------------------


def torch_values(make, steps, momentum=False, metrics=None):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    scheduler = make(torch.optim.lr_scheduler, opt)
    lrs, moms = [], []
    for t in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        if metrics is None:
            scheduler.step()
        else:
            scheduler.step(metrics[t])
    return np.array(moms if momentum else lrs)


TORCH_CASES = [
    (lambda L, o: L.StepLR(o, 7, 0.8), S.step_decay(0.1, 7, 0.8)),
    (lambda L, o: L.MultiStepLR(o, [5, 9, 30], 0.5), S.multi_step(0.1, [5, 9, 30], 0.5)),
    (lambda L, o: L.ExponentialLR(o, 0.95), S.exponential(0.1, 0.95)),
    (lambda L, o: L.ConstantLR(o, 0.25, 6), S.constant(0.1, 0.25, 6)),
    (lambda L, o: L.LinearLR(o, 0.1, 0.9, 12), S.linear(0.1, 0.1, 0.9, 12)),
    (lambda L, o: L.PolynomialLR(o, 17, 1.7), S.polynomial(0.1, 17, 1.7)),
    (lambda L, o: L.CosineAnnealingLR(o, 13, 0.002), S.cosine_annealing(0.1, 13, 0.002)),
    (lambda L, o: L.CosineAnnealingWarmRestarts(o, 5, 1, 0.001), S.cosine_warm_restarts(0.1, 5, 1, 0.001)),
    (lambda L, o: L.CosineAnnealingWarmRestarts(o, 3, 2), S.cosine_warm_restarts(0.1, 3, 2)),
    (lambda L, o: L.CyclicLR(o, 0.01, 0.1, 4, 6, cycle_momentum=False), S.cyclic(0.01, 0.1, 4, 6)),
    (lambda L, o: L.CyclicLR(o, 0.01, 0.1, 5, mode="triangular2", cycle_momentum=False),
     S.cyclic(0.01, 0.1, 5, mode="triangular2")),
    (lambda L, o: L.CyclicLR(o, 0.01, 0.1, 3, 7, mode="exp_range", gamma=0.98, cycle_momentum=False),
     S.cyclic(0.01, 0.1, 3, 7, mode="exp_range", gamma=0.98)),
    (lambda L, o: L.OneCycleLR(o, 0.1, total_steps=50), S.one_cycle(0.1, 50)),
    (lambda L, o: L.OneCycleLR(o, 0.2, total_steps=41, pct_start=0.4, anneal_strategy="linear",
                               div_factor=10, final_div_factor=50, three_phase=True),
     S.one_cycle(0.2, 41, 0.4, "linear", 10, 50, three_phase=True)),
]


@pytest.mark.parametrize("make, schedule", TORCH_CASES, ids=[s.name for _, s in TORCH_CASES])
def test_learning_rates_match_torch(make, schedule):
    steps = schedule.total_steps if schedule.name == "one_cycle" else 120
    np.testing.assert_allclose(S.evaluate(schedule, steps), torch_values(make, steps), rtol=1e-12, atol=0)


@pytest.mark.parametrize("make, lr_schedule, base, peak", [
    (lambda L, o: L.CyclicLR(o, 0.01, 0.1, 4, 6, base_momentum=0.8, max_momentum=0.9),
     S.cyclic(0.01, 0.1, 4, 6), 0.8, 0.9),
    (lambda L, o: L.OneCycleLR(o, 0.1, total_steps=40, three_phase=True), S.one_cycle(0.1, 40, three_phase=True), 0.85, 0.95),
])
def test_cycled_momentum_matches_torch(make, lr_schedule, base, peak):
    maker = S.cyclic_momentum if lr_schedule.name == "cyclic" else S.one_cycle_momentum
    momentum = maker(lr_schedule, base, peak)
    np.testing.assert_allclose(S.evaluate(momentum, 40), torch_values(make, 40, momentum=True), rtol=1e-12)


@pytest.mark.parametrize("make, ours", [
    (lambda L, o: L.SequentialLR(o, [L.LinearLR(o, 0.2, 1.0, 5), L.CosineAnnealingLR(o, 20, 0.01)], [5]),
     S.sequence([S.linear(0.1, 0.2, 1.0, 5), S.cosine_annealing(0.1, 20, 0.01)], [5])),
    (lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, 0.1, 2), L.ExponentialLR(o, 0.9)], [2]),
     S.sequence([S.constant(0.1, 0.1, 2), S.exponential(0.1, 0.9)], [2])),
])
def test_sequence_matches_torch(make, ours):
    steps = 40
    np.testing.assert_allclose(S.evaluate(ours, steps), torch_values(make, steps), rtol=1e-12)


PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.95, 0.95, 0.89999, 0.95, 0.95, 0.95, 0.95, 0.5, 0.6, 0.6, 0.6,
                   0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]


@pytest.mark.parametrize("options", [
    dict(), dict(mode="max", factor=0.5, patience=1, threshold=0.01, threshold_mode="abs"),
    dict(factor=0.5, patience=2, cooldown=2, min_lr=0.03), dict(patience=0, threshold=0.05),
])
def test_reduce_on_plateau_matches_torch(options):
    steps = len(PLATEAU_METRICS)
    theirs = torch_values(lambda L, o: L.ReduceLROnPlateau(o, **options), steps, metrics=PLATEAU_METRICS)
    opt = SGD(FlatParams({"w": 1}), lr=0.1)
    plateau = ReduceLROnPlateau(opt, **options)
    ours = []
    for metric in PLATEAU_METRICS:
        ours.append(opt.lr)
        plateau.step(metric)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


# -- schedulers driving optimizers ------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=1.0, momentum=0.9), lambda p: Adam(p, lr=1.0), lambda p: AdamW(p, lr=1.0),
    lambda p: RMSProp(p, lr=1.0, momentum=0.5), lambda p: fastopt.Adamax(p, lr=1.0), lambda p: fastopt.RAdam(p, lr=1.0),
    lambda p: fastopt.Lion(p, lr=1.0), lambda p: fastopt.NAdam(p, lr=1.0), lambda p: fastopt.LAMB(p, lr=1.0),
])
def test_scheduler_drives_each_optimizer(make):
    params = FlatParams({"w": 5, "b": 2})
    opt = make(params)
    lr = S.cyclic(0.01, 0.1, step_size_up=3)
    scheduler = Scheduler(opt, lr, momentum=S.cyclic_momentum(lr, 0.8, 0.9))
    seen = []
    for _ in range(7):
        params.grad[:] = 0.1
        opt.step()
        scheduler.step()
        first = opt.config.betas[0] if hasattr(opt.config, "betas") else opt.config.momentum
        seen.append((opt.lr, first))
    expected = [(lr(t), 0.9 - (lr(t) - 0.01) / 0.09 * 0.1) for t in range(1, 8)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert scheduler.step_count == 7


def test_scheduler_moves_groups_through_their_factor():
    params = FlatParams({"w": 2, "b": 1})
    opt = SGD(params, lr=1.0, groups=[fastopt.ParamGroup(["b"], lr_factor=0.5)])
    scheduler = Scheduler(opt, S.step_decay(0.4, 1, 0.5))
    scheduler.step()
    params.grad[:] = 1.0
    opt.step()
    np.testing.assert_allclose(params.data, [-0.2, -0.2, -0.1], rtol=1e-6)


def test_scheduler_state_dict_continues_mid_cycle():
    def run(scheduler, opt, steps):
        out = []
        for _ in range(steps):
            scheduler.step()
            out.append((opt.lr, opt.config.momentum))
        return out

    lr = S.warmup(S.cyclic(0.01, 0.1, 4, 3, mode="triangular2"), 3)
    momentum = S.warmup(S.cyclic_momentum(S.cyclic(0.01, 0.1, 4, 3, mode="triangular2")), 3, 0.9)
    opt = SGD(FlatParams({"w": 1}), lr=0.1, momentum=0.9)
    scheduler = Scheduler(opt, lr, momentum=momentum)
    run(scheduler, opt, 9)
    saved = json.loads(json.dumps(scheduler.state_dict()))
    uninterrupted = run(scheduler, opt, 15)

    opt2 = SGD(FlatParams({"w": 1}), lr=0.5, momentum=0.5)
    restored = Scheduler(opt2, S.constant(0.5))
    restored.load_state_dict(saved)
    assert restored.step_count == 9 and opt2.lr == lr(9)
    assert run(restored, opt2, 15) == uninterrupted


def test_plateau_state_dict_continues():
    metrics = PLATEAU_METRICS
    opt = SGD(FlatParams({"w": 1}), lr=0.1)
    plateau = ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1)
    for m in metrics[:9]:
        plateau.step(m)
    saved = json.loads(json.dumps({"opt": opt.state_dict()["config"], "plateau": plateau.state_dict()}))
    rest = []
    for m in metrics[9:]:
        plateau.step(m)
        rest.append(opt.lr)
    opt2 = SGD(FlatParams({"w": 1}), lr=saved["opt"]["lr"])
    plateau2 = ReduceLROnPlateau(opt2)
    plateau2.load_state_dict(saved["plateau"])
    rest2 = []
    for m in metrics[9:]:
        plateau2.step(m)
        rest2.append(opt2.lr)
    assert rest2 == rest


@given(st.sampled_from(EXAMPLES), st.integers(0, 10_000))
def test_any_step_evaluates_on_its_own(schedule, step):
    value = schedule(step)
    assert math.isfinite(value) and value >= 0
    assert S.from_dict(schedule.to_dict())(step) == value


# -- bad input ----------------------------------------------------------------------------------

BAD = [
    (lambda: S.step_decay(0.1, 0), ValueError, "step_size=0"),
    (lambda: S.step_decay(0.1, -3), ValueError, "step_size=-3"),
    (lambda: S.step_decay(0.1, 10, gamma=1.5), ValueError, "gamma=1.5"),
    (lambda: S.step_decay(-0.1, 10), ValueError, r"init_value=-0\.1"),
    (lambda: S.step_decay(0.1, 2.5), TypeError, "step_size=2.5"),
    (lambda: S.multi_step(0.1, [30, 10]), ValueError, "milestones"),
    (lambda: S.multi_step(0.1, [10, 10]), ValueError, "milestones"),
    (lambda: S.exponential(0.1, float("nan")), ValueError, "gamma=nan"),
    (lambda: S.exponential(0.1, 0.9, transition_steps=0), ValueError, "transition_steps=0"),
    (lambda: S.linear(0.1, start_factor=0.0), ValueError, "start_factor"),
    (lambda: S.linear(0.1, total_steps=0), ValueError, "total_steps=0"),
    (lambda: S.cosine_annealing(0.1, T_max=0), ValueError, "T_max=0"),
    (lambda: S.cosine_warm_restarts(0.1, T_0=0), ValueError, "T_0=0"),
    (lambda: S.cosine_warm_restarts(0.1, T_0=5, T_mult=0), ValueError, "T_mult=0"),
    (lambda: S.cyclic(0.1, 0.01), ValueError, "max_value"),
    (lambda: S.cyclic(0.01, 0.1, step_size_up=0), ValueError, "step_size_up=0"),
    (lambda: S.cyclic(0.01, 0.1, step_size_down=-1), ValueError, "step_size_down=-1"),
    (lambda: S.cyclic(0.01, 0.1, mode="sawtooth"), ValueError, "mode='sawtooth'"),
    (lambda: S.one_cycle(0.1, 1), ValueError, "total_steps=1"),
    (lambda: S.one_cycle(0.1, 100, pct_start=1.5), ValueError, r"pct_start=1\.5"),
    (lambda: S.one_cycle(0.1, 100, anneal_strategy="step"), ValueError, "anneal_strategy"),
    (lambda: S.one_cycle(0.1, 100, div_factor=0), ValueError, "div_factor"),
    (lambda: S.one_cycle_momentum(S.one_cycle(0.1, 10), 0.99, 0.9), ValueError, "base_value"),
    (lambda: S.warmup(0.1, 5), TypeError, "schedule"),
    (lambda: S.warmup(S.constant(0.1), 0), ValueError, "steps=0"),
    (lambda: S.sequence([S.constant(0.1), S.constant(0.2)], []), ValueError, "boundaries"),
    (lambda: S.sequence([S.constant(0.1)] * 3, [5, 5]), ValueError, "boundaries"),
    (lambda: S.sequence([S.constant(0.1)] * 2, [0]), ValueError, "boundaries=0"),
    (lambda: S.from_dict({"name": "nope"}), ValueError, "not a schedule"),
    (lambda: S.from_dict({"name": "step_decay", "init_value": 0.1}), ValueError, "step_decay"),
    (lambda: S.by_name("nope"), ValueError, "unknown schedule 'nope'"),
    (lambda: S.constant(0.1)(-1), ValueError, "step=-1"),
    (lambda: Scheduler(SGD(FlatParams({"w": 1})), 0.1), TypeError, "lr"),
    (lambda: Scheduler(SGD(FlatParams({"w": 1})), S.constant(0.1), momentum=S.constant(0.9)),
     ValueError, "momentum > 0"),
    (lambda: Scheduler("opt", S.constant(0.1)), TypeError, "optimizer"),
    (lambda: ReduceLROnPlateau(SGD(FlatParams({"w": 1})), mode="up"), ValueError, "mode='up'"),
    (lambda: ReduceLROnPlateau(SGD(FlatParams({"w": 1})), factor=1.0), ValueError, "factor=1.0"),
    (lambda: ReduceLROnPlateau(SGD(FlatParams({"w": 1})), patience=-1), ValueError, "patience=-1"),
    (lambda: ReduceLROnPlateau(SGD(FlatParams({"w": 1})), threshold_mode="pct"), ValueError, "threshold_mode"),
    (lambda: ReduceLROnPlateau(SGD(FlatParams({"w": 1})), min_lr=-1), ValueError, "min_lr=-1"),
]


@pytest.mark.parametrize("make, error, message", BAD)
def test_bad_input_is_refused_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_scheduler_state_changes_nothing():
    opt = SGD(FlatParams({"w": 1}), lr=0.1)
    scheduler = Scheduler(opt, S.step_decay(0.1, 2))
    scheduler.step()
    bad = {**scheduler.state_dict(), "lr": {"name": "step_decay", "init_value": 0.1, "step_size": 0}}
    with pytest.raises(ValueError, match="step_size=0"):
        scheduler.load_state_dict(bad)
    assert scheduler.step_count == 1 and scheduler.state_dict()["lr"]["step_size"] == 2


@pytest.mark.parametrize("options", [dict(total_steps=10, pct_start=0.1), dict(total_steps=10, pct_start=1.0),
                                     dict(total_steps=10, pct_start=0.6, three_phase=True)])
def test_one_cycle_refuses_an_empty_phase(options):
    with pytest.raises(ValueError, match="pct_start"):
        S.one_cycle(0.1, **options)
