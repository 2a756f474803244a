"""The library used as a careless or unlucky user would: threads, buffers changed in place,
hyperparameters the dtype cannot hold, state dicts that lie (issue 15)."""

import os
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastopt
from fastopt import SGD, Adam, AdamW, FlatParams, ParamGroup


def test_configuration_changes_under_running_steps_are_seen_whole():
    """One thread flips the optimizer between two state dicts (other groups, other weight
    decays, another rule and so other state buffers) thousands of times, while another
    steps and asks for the penalty: every penalty is one of the two exact values and, with
    lr = 0, no parameter moves."""
    params = FlatParams({"w": 5000, "b": 3000, "c": 2000})
    params.data[:] = 1.0
    first = AdamW(params, lr=0.0, weight_decay=0.1)
    second = AdamW(FlatParams({"w": 5000, "b": 3000, "c": 2000}), lr=0.0, weight_decay=0.3, amsgrad=True,
                   groups=[ParamGroup(["b"], weight_decay=0.7), ParamGroup(["c"], lr_factor=2.0)])
    states = [first.state_dict(), second.state_dict()]
    penalties = set()
    for state in states:  # the exact values: each configuration, with its weight decay or 0.5
        first.load_state_dict(state)
        penalties.add(first.l2_penalty())
        first.step()  # every kernel compiled (or loaded) before the race, not during it
        first._step_at(1, frozenset({"b"}))
        first.set_hyperparameters(weight_decay=0.5)
        penalties.add(first.l2_penalty())
    assert len(penalties) == 4
    stop, seen, errors = threading.Event(), [], []

    def flip():
        try:
            for k in range(3000):
                if k % 3 == 2:
                    first.set_hyperparameters(weight_decay=0.5)  # a new group table and plan
                else:
                    first.load_state_dict(states[k % 2])
        except Exception as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)
        finally:
            stop.set()

    flipper = threading.Thread(target=flip)
    flipper.start()
    while not stop.is_set():
        seen.append(first.l2_penalty())
        first.step()
        first._step_at(3, frozenset({"c"}))  # a subset's masked table, built from the plan
    flipper.join()
    assert not errors, errors
    assert len(seen) > 100 and set(seen) <= penalties, set(seen) - penalties
    assert np.all(params.data == 1.0)


RESIZE = """
import numpy as np, fastopt
params = fastopt.FlatParams({"w": 100000})
optimizer = fastopt.Adam(params, lr=0.1)
optimizer.step()
params.%s.resize(10, refcheck=False)
try:
    optimizer.%s()
except ValueError as error:
    print("refused:", error)
print("steps:", optimizer.step_count)
"""


@pytest.mark.parametrize("buffer, call", [("data", "step"), ("grad", "step"), ("data", "l2_penalty")])
def test_a_buffer_resized_in_place_is_refused_not_read_out_of_bounds(buffer, call):
    result = subprocess.run([sys.executable, "-c", RESIZE % (buffer, call)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # no signal
    assert f"refused: params.{buffer} changed shape since the optimizer was built: (100000,) -> (10,)" in result.stdout
    assert "steps: 1" in result.stdout  # the refused step did not count


def test_a_buffer_made_read_only_or_reinterpreted_is_refused_naming_the_change():
    params = FlatParams({"w": 64})
    optimizer = SGD(params, lr=0.1)
    params.grad.flags.writeable = True
    params.data.flags.writeable = False
    with pytest.raises(ValueError, match="params.data is no longer writeable"):
        optimizer.step()
    params.data.flags.writeable = True
    params.grad.dtype = np.int32  # same bytes, another dtype
    with pytest.raises(ValueError, match="params.grad changed dtype"):
        optimizer.step()
    assert optimizer.step_count == 0


@pytest.mark.parametrize("make, message", [
    (lambda p: Adam(p, eps=1e-46), "eps=1e-46 rounds to 0 in float32"),
    (lambda p: Adam(p, lr=1e300), r"lr=1e\+300 is beyond float32's range"),
    (lambda p: AdamW(p, weight_decay=1e300), r"weight_decay=1e\+300 is beyond float32's range"),
    (lambda p: SGD(p, momentum=1e300), r"momentum=1e\+300 is beyond float32's range"),
    (lambda p: SGD(p, lr=1e38, groups=[ParamGroup(["w"], lr_factor=100.0)]), "lr \\* lr_factor"),
])
def test_hyperparameters_the_dtype_cannot_hold_are_refused(make, message):
    params = FlatParams({"w": 8, "b": 2})
    with pytest.raises(ValueError, match=message):
        make(params)
    make(FlatParams({"w": 8, "b": 2}, dtype=np.float64))  # float64 holds them


def test_a_fast_change_the_dtype_cannot_hold_changes_nothing():
    optimizer = Adam(FlatParams({"w": 8}), lr=0.1)
    for change in (lambda: setattr(optimizer, "lr", 1e39), lambda: optimizer.set_hyperparameters(eps=1e-47)):
        with pytest.raises(ValueError, match="float32"):
            change()
        assert optimizer.lr == 0.1 and optimizer.config.eps == 1e-8


def test_a_state_dict_must_be_whole_and_its_step_an_int64():
    optimizer = Adam(FlatParams({"w": 4}), lr=0.1)
    state = optimizer.state_dict()
    lacking = {**state, "config": {k: v for k, v in state["config"].items() if k != "eps"}}
    with pytest.raises(ValueError, match=r"config lacks \['eps'\]"):
        optimizer.load_state_dict(lacking)
    for step in (10**400, 2**63, -1):
        with pytest.raises(ValueError, match=r"step must be an int in \[0, 2\*\*63\)"):
            optimizer.load_state_dict({**state, "step": step})
    optimizer.load_state_dict({**state, "step": np.int64(2**63 - 1)})
    optimizer.step()  # the bias corrections of a step that large are finite
    assert np.isfinite(optimizer.params.data).all()


@pytest.mark.parametrize("make", [lambda p: Adam(p, lr=1e-3), lambda p: AdamW(p, lr=1e-3, amsgrad=True),
                                  lambda p: fastopt.RMSProp(p, lr=1e-3)])
def test_a_gradient_whose_square_overflows_does_not_freeze_its_parameter(make):
    """|g| = 1e20 in float32: g * g overflows, (1 - beta2) * g * g does not (torch's order), so
    the second moment stays finite and the parameter moves again once it decays."""
    params = FlatParams({"w": 4})
    optimizer = make(params)
    params.grad[:] = [1e20, 1.0, -1.0, 0.5]
    optimizer.step()
    state = optimizer.state["exp_avg_sq" if "exp_avg_sq" in optimizer.state else "square_avg"]
    assert np.isfinite(state).all()
    before = params.data.copy()
    params.grad[:] = 1.0
    for _ in range(100_000):  # until v, about 1e37 here, has decayed (inf never would)
        optimizer.step()
    assert np.isfinite(params.data).all() and params.data[0] != before[0]


SAVER = """
import sys, numpy as np
from fastopt.train.checkpoint import save_checkpoint
save_checkpoint(sys.argv[1], {"a": np.zeros(16_000_000)}, {"step": 1})
"""


def test_saves_killed_midway_leave_nothing_after_the_next_save(tmp_path):
    """Eight saves (128 MB each) killed with SIGKILL once their temporary file is being
    written, then one normal save: no temporary file is left, and the checkpoint loads."""
    import signal
    import time

    from fastopt.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.npz"
    for _ in range(8):
        saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)])
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(f".checkpoint-{saver.pid}@*.npz.tmp")) and time.monotonic() < deadline:
            time.sleep(0.005)
        saver.send_signal(signal.SIGKILL)
        saver.wait()
    left = list(tmp_path.glob(".checkpoint-*.npz.tmp"))
    assert len(left) == 8 and not path.exists()  # every kill landed mid-save
    save_checkpoint(path, {"a": np.ones(3)}, {"step": 2})
    assert not list(tmp_path.glob(".checkpoint-*.npz.tmp"))
    arrays, meta = load_checkpoint(path)
    assert meta["step"] == 2 and arrays["a"].tolist() == [1.0, 1.0, 1.0]


def test_a_save_in_progress_elsewhere_is_left_alone(tmp_path):
    """A living process's temporary file stays; so does a fresh one of another host or pid
    namespace (whose process cannot be asked about) or of an older fastopt, until an hour old."""
    import time

    from fastopt.train.checkpoint import _owner, save_checkpoint

    living = tmp_path / f".checkpoint-{os.getppid()}@{_owner()}-abc.npz.tmp"  # the parent is alive
    elsewhere = tmp_path / ".checkpoint-1@otherhost.4026531836-abc.npz.tmp"
    legacy = tmp_path / ".checkpoint-abc123.npz.tmp"
    stale_elsewhere = tmp_path / ".checkpoint-2@otherhost.4026531836-def.npz.tmp"
    stale_legacy = tmp_path / ".checkpoint-def456.npz.tmp"
    unrelated = tmp_path / "notes.npz.tmp"
    for path in (living, elsewhere, legacy, stale_elsewhere, stale_legacy, unrelated):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in (stale_elsewhere, stale_legacy):
        os.utime(path, (two_hours_ago, two_hours_ago))
    save_checkpoint(tmp_path / "c.npz", {"a": np.ones(2)}, {})
    assert living.exists() and elsewhere.exists() and legacy.exists() and unrelated.exists()
    assert not stale_elsewhere.exists() and not stale_legacy.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_checkpoint_gets_the_mode_the_umask_gives(tmp_path, umask):
    from fastopt.train.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.npz", {"a": np.ones(2)}, {})
    finally:
        os.umask(old)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_schedules_stay_finite_at_any_step(mode):
    from fastopt import schedules

    schedule = schedules.cyclic(1e-3, 1e-2, step_size_up=500, mode=mode, gamma=0.9999)
    for step in (1_024_000, 10**8, 2**40, 2**63 - 1):
        value = schedule(step)
        assert math.isfinite(value) and 0.0 <= value <= 1e-2, (step, value)


def test_every_schedule_is_finite_up_to_2_to_the_63():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fastopt import schedules

    built = [schedules.constant(0.1, factor=0.5, total_steps=10), schedules.step_decay(0.1, 7, 0.5),
             schedules.multi_step(0.1, (5, 50), 0.5), schedules.exponential(0.1, 0.9),
             schedules.exponential(0.1, 0.9, transition_steps=3, staircase=True), schedules.linear(0.1),
             schedules.polynomial(0.1, total_steps=100, power=2.0), schedules.cosine_annealing(0.1, T_max=100),
             schedules.cosine_warm_restarts(0.1, T_0=10, T_mult=2), schedules.cosine_warm_restarts(0.1, T_0=10),
             schedules.cyclic(0.01, 0.1, 50, mode="triangular2"), schedules.one_cycle(0.1, total_steps=1000),
             schedules.warmup(schedules.cosine_annealing(0.1, T_max=100), steps=10),
             schedules.sequence([schedules.linear(0.1), schedules.exponential(0.1, 0.99)], [5]),
             schedules.product(schedules.step_decay(0.1, 3), schedules.cyclic(0.5, 1.0, 4))]

    @settings(max_examples=300, deadline=None)
    @given(step=st.integers(0, 2**63 - 1))
    def finite(step):
        for schedule in built:
            assert math.isfinite(schedule(step)), (schedule, step)

    finite()


def test_the_cli_draws_triangular2_over_thousands_of_cycles(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastopt.cli", "schedule", "cyclic", "--base_value", "0.001",
                             "--max_value", "0.01", "--step_size_up", "1", "--mode", "triangular2", "--steps", "3000",
                             "--out", str(tmp_path / "s.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_a_plateau_state_with_a_nan_best_is_refused():
    from fastopt import ReduceLROnPlateau

    plateau = ReduceLROnPlateau(Adam(FlatParams({"w": 2})))
    with pytest.raises(ValueError, match="best must be a number or"):
        plateau.load_state_dict({**plateau.state_dict(), "best": math.nan})
    assert plateau.best == math.inf


def test_a_scheduler_state_takes_a_numpy_step_as_the_optimizer_does():
    from fastopt import Scheduler, schedules

    optimizer = Adam(FlatParams({"w": 2}))
    scheduler = Scheduler(optimizer, schedules.step_decay(0.1, 2))
    scheduler.load_state_dict({**scheduler.state_dict(), "step": np.int64(5)})
    assert scheduler.step_count == 5 and optimizer.lr == pytest.approx(0.1 * 0.1**2)
    with pytest.raises(ValueError, match=r"step must be an int in \[0, 2\*\*63\)"):
        scheduler.load_state_dict({**scheduler.state_dict(), "step": 2**63})


def test_a_fit_that_would_pass_dropouts_step_limit_is_refused_before_training():
    from fastopt import MLP, Trainer, losses

    model = MLP((4, 3, 2), dropout=0.1)
    trainer = Trainer(model, Adam(model.params), losses.softmax_cross_entropy)
    trainer.step = 2**32 - 5
    before = model.params.data.copy()
    with pytest.raises(ValueError, match="past dropout's limit"):
        trainer.fit(np.zeros((40, 4)), np.zeros(40, int), epochs=1, batch_size=4)
    assert np.array_equal(before, model.params.data) and trainer.step == 2**32 - 5


def test_wrap_refuses_a_masked_array():
    data = np.ma.masked_array(np.zeros(4, np.float32), mask=[0, 1, 0, 0])
    with pytest.raises(TypeError, match="data must be a plain numpy array"):
        FlatParams.wrap(data, np.zeros(4, np.float32), {"w": 4})


def test_a_new_weight_decay_leaves_the_running_plan_untouched():
    """A step running while another thread sets a weight decay holds the old plan: its table
    must stay as it was (the change publishes a new table in a new plan, never writes the old)."""
    optimizer = AdamW(FlatParams({"w": 8, "b": 2}), weight_decay=0.1, groups=[ParamGroup(["b"], weight_decay=0.7)])
    running = optimizer._plan
    table = running.buffers[5].copy()
    optimizer.set_hyperparameters(weight_decay=0.4)
    assert optimizer._plan is not running and np.array_equal(running.buffers[5], table)
    assert optimizer._plan.buffers[5][:, 1].tolist() == [0.4, 0.7]


def test_a_refused_state_dict_leaves_the_lr_bound_of_the_groups_in_use():
    params = FlatParams({"w": 4, "b": 2})
    optimizer = SGD(params, lr=1.0, groups=[ParamGroup(["b"], lr_factor=1e30)])
    other = SGD(FlatParams({"w": 4, "b": 2}), lr=1.0).state_dict()
    with pytest.raises(ValueError, match="step must be"):
        optimizer.load_state_dict({**other, "step": -1})
    with pytest.raises(ValueError, match="beyond float32's range"):
        optimizer.lr = 1e10  # 1e10 * 1e30 overflows float32 for group b
    assert optimizer.lr == 1.0
