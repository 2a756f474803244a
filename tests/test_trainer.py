"""Losses, the MLP, the trainer, checkpoints and `fastopt train`."""

import csv
import io
import os
import re

import numpy as np
import pytest

import fastopt
from fastopt import MLP, SGD, AdamW, Checkpoint, EarlyStopping, Scheduler, Trainer, cli, losses, schedules
from fastopt.train.checkpoint import load_checkpoint, save_checkpoint

LOSSES = [
    (losses.mean_squared_error, "real"), (losses.mean_absolute_error, "real"), (losses.Huber(0.7), "real"),
    (losses.binary_cross_entropy_with_logits, "binary"), (losses.softmax_cross_entropy, "labels"),
]


def _targets(kind, rng, shape):
    if kind == "real":
        return rng.standard_normal(shape)
    if kind == "binary":
        return rng.uniform(0, 1, shape)
    return rng.integers(0, shape[1], shape[0])


def numeric_gradient(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (f(up) - f(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("loss, kind", LOSSES, ids=lambda v: getattr(v, "name", v))
def test_loss_gradients_match_finite_differences(loss, kind, rng):
    prediction = rng.standard_normal((6, 4)) * 3
    target = _targets(kind, rng, (6, 4))
    per_sample = loss(prediction, target)
    assert per_sample.shape == (6,)
    expected = numeric_gradient(lambda p: float(np.mean(loss(p, target))), prediction)
    np.testing.assert_allclose(losses.cost_gradient(loss, prediction, target), expected, rtol=1e-5, atol=1e-8)


def test_losses_are_stable_for_extreme_logits():
    logits = np.array([[1000.0, -1000.0, 0.0]])
    assert np.isfinite(losses.softmax_cross_entropy(logits, np.array([1]))).all()
    assert losses.softmax_cross_entropy(logits, np.array([1]))[0] == pytest.approx(2000.0)
    bce = losses.binary_cross_entropy_with_logits(np.array([[800.0, -800.0]]), np.array([[0.0, 1.0]]))
    assert bce[0] == pytest.approx(800.0)


def test_cost_is_the_mean_loss_plus_the_penalty():
    p, t = np.array([[1.0], [3.0]]), np.array([[0.0], [0.0]])
    assert losses.cost(losses.mean_squared_error, p, t, penalty=0.5) == pytest.approx(5.5)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_model_gradients_match_finite_differences(activation, dropout, rng):
    model = MLP((5, 7, 6, 3), activation=activation, dropout=dropout, seed=3, dtype=np.float64)
    model.params.data[:] += rng.normal(0, 0.05, model.params.size)  # biases away from zero
    x = rng.standard_normal((4, 5))
    labels = rng.integers(0, 3, 4)

    def cost(flat):
        saved = model.params.data.copy()
        model.params.data[:] = flat
        value = float(np.mean(losses.softmax_cross_entropy(model.forward(x, training=True, step=9), labels)))
        model.params.data[:] = saved
        return value

    outputs = model.forward(x, training=True, step=9)
    model.backward(losses.cost_gradient(losses.softmax_cross_entropy, outputs, labels))
    expected = numeric_gradient(cost, model.params.data.copy())
    np.testing.assert_allclose(model.params.grad, expected, rtol=1e-4, atol=1e-7)


def _problem(n=300, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (classes, features))
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.normal(0, 1, (n, features))).astype(np.float32)
    return x, y


def _trainer(seed=0, folder=None, lr=0.01):
    model = MLP((6, 16, 3), dropout=0.2, seed=seed)
    optimizer = AdamW(model.params, lr=lr)
    scheduler = Scheduler(optimizer, schedules.cosine_annealing(lr, 10))
    callbacks = [Checkpoint(folder)] if folder else []
    return Trainer(model, optimizer, losses.softmax_cross_entropy, scheduler=scheduler,
                   callbacks=callbacks, seed=seed)


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    x, y = _problem()
    straight = _trainer()
    straight.fit(x, y, epochs=6, batch_size=16, validation_split=0.2)

    first = _trainer(folder=tmp_path)
    first.fit(x, y, epochs=3, batch_size=16, validation_split=0.2)
    resumed = _trainer(seed=0)
    resumed.model.params.data[:] = 0  # everything must come from the checkpoint
    resumed.load(tmp_path / "checkpoint.npz")
    assert resumed.epoch == 3
    resumed.fit(x, y, epochs=6, batch_size=16, validation_split=0.2)
    assert np.array_equal(resumed.model.params.data, straight.model.params.data)
    assert resumed.history == straight.history
    for name, buffer in straight.optimizer.state.items():
        assert np.array_equal(resumed.optimizer.state[name], buffer)


def test_a_checkpoint_write_that_dies_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"a": np.arange(3.0)}, {"epoch": 1})

    def dies_midway(stream, **arrays):
        stream.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"a": np.arange(5.0)}, {"epoch": 2})
    arrays, meta = load_checkpoint(path)
    assert meta["epoch"] == 1 and arrays["a"].tolist() == [0.0, 1.0, 2.0]
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    x, y = _problem()
    trainer = _trainer(folder=tmp_path)
    trainer.fit(x, y, epochs=1)
    model = MLP((6, 8, 3))
    other = Trainer(model, AdamW(model.params), losses.softmax_cross_entropy,
                    scheduler=Scheduler(AdamW(model.params), schedules.constant(0.1)))
    with pytest.raises(ValueError, match="different model"):
        other.load(tmp_path / "checkpoint.npz")


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.standard_normal((64, 1)).astype(np.float32) * 1e3
    model = MLP((4, 8, 1), seed=0)
    optimizer = SGD(model.params, lr=1e-3)
    trainer = Trainer(model, optimizer, losses.mean_squared_error, callbacks=[Checkpoint(tmp_path)])
    trainer.fit(x, y, epochs=1, batch_size=64)
    good = load_checkpoint(tmp_path / "checkpoint.npz")[0]["params"].copy()
    optimizer.lr = 1e3  # now it diverges
    trainer.fit(x, y, epochs=50, batch_size=8)
    assert "loss became" in trainer.stop_reason
    assert np.array_equal(load_checkpoint(tmp_path / "checkpoint.npz")[0]["params"], good)


def test_early_stopping_stops():
    x, y = _problem()
    trainer = _trainer(lr=0.0)  # never improves
    trainer.callbacks.append(EarlyStopping("val_loss", patience=2))
    trainer.fit(x, y, epochs=20, validation_split=0.2)
    assert len(trainer.history) == 3 and "val_loss" in trainer.stop_reason


@pytest.mark.parametrize("call, message", [
    (lambda t, x, y: t.fit(x, y[:-1], epochs=1), "same length"),
    (lambda t, x, y: t.fit(np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y, epochs=1), "NaN"),
    (lambda t, x, y: t.fit(x, y + 3, epochs=1), r"labels must be integers in \[0, 3\)"),
    (lambda t, x, y: t.fit(x, y, epochs=1, batch_size=0), "batch_size=0"),
    (lambda t, x, y: t.fit(x, y, epochs=1, validation_split=1.5), "validation_split"),
])
def test_bad_training_data_is_refused(call, message):
    x, y = _problem(50)
    trainer = _trainer()
    before = trainer.model.params.data.copy()
    with pytest.raises(ValueError, match=message):
        call(trainer, x, y)
    assert np.array_equal(trainer.model.params.data, before)


# -- the command ---------------------------------------------------------------------------------


def _csv(path, n=240, bad_cell=None):
    x, y = _problem(n)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([f"f{k}" for k in range(x.shape[1])] + ["label"])
        for r, (features, label) in enumerate(zip(x, y)):
            row = [f"{v:.5f}" for v in features] + [str(label)]
            if bad_cell is not None and r == 3:
                row[1] = bad_cell
            writer.writerow(row)
    return path


def test_train_command_on_a_csv_with_checkpoint_resume_and_plot(tmp_path, capsys):
    data = _csv(tmp_path / "data.csv")
    folder, plot = tmp_path / "ckpt", tmp_path / "curves.png"
    common = ["train", "--data", str(data), "--target", "label", "--hidden", "16", "--lr", "0.02", "--no-progress",
              "--checkpoint", str(folder)]
    assert cli.main([*common, "--epochs", "3", "--plot", str(plot)]) == 0
    assert (folder / "checkpoint.npz").exists() and plot.read_bytes()[:4] == b"\x89PNG"
    assert cli.main([*common, "--epochs", "5", "--resume", "--replan"]) == 0
    output = capsys.readouterr().out
    assert "resumed from" in output and "at epoch 3" in output
    assert "replanned from epoch 3: epochs 3 -> 5; the schedule runs over the 2 epochs left" in output
    accuracy = float(re.findall(r"test accuracy (\S+),", output)[-1])
    assert accuracy > 0.8


def test_train_command_reaches_97_percent_on_digits(capsys):
    pytest.importorskip("sklearn")
    assert cli.main(["train", "--no-progress"]) == 0
    accuracy = float(re.search(r"test accuracy (\S+),", capsys.readouterr().out).group(1))
    assert accuracy >= 0.97


@pytest.mark.parametrize("make, arguments, message", [
    (lambda p: _csv(p), ["--target", "nope"], "no column 'nope'"),
    (lambda p: _csv(p, bad_cell="abc"), [], "row 5, column 'f1': 'abc' is not a number"),
    (lambda p: _csv(p, bad_cell="nan"), [], "NaN or inf"),
    (lambda p: _csv(p), ["--batch-size", "0"], "--batch-size and --epochs must be >= 1"),
    (lambda p: _csv(p), ["--device", "cuda"], "--device cuda: device='cuda' needs"),
    (lambda p: _csv(p), ["--resume"], "--resume needs --checkpoint"),
    (lambda p: p, [], "does not exist"),
])
def test_train_command_refuses_bad_input(make, arguments, message, tmp_path, capsys):
    path = make(tmp_path / "data.csv")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", str(path), "--target", "label", "--epochs", "1", "--no-progress", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_train_command_refuses_fractional_labels_as_classes(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", X=np.ones((10, 2)), y=np.linspace(0, 1, 10))
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", str(tmp_path / "d.npz"), "--task", "classification", "--no-progress"])
    assert "holds fractions; classes are names or whole numbers" in capsys.readouterr().err


def test_a_checkpoint_with_a_bad_part_changes_nothing(tmp_path):
    x, y = _problem()
    trainer = _trainer(folder=tmp_path)
    trainer.fit(x, y, epochs=2)
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    meta["scheduler"]["lr"]["T_max"] = 0  # the optimizer part is fine, the scheduler's is not
    save_checkpoint(tmp_path / "bad.npz", arrays, {k: v for k, v in meta.items() if k != "format"})
    fresh = _trainer()
    before = (fresh.model.params.data.copy(), fresh.optimizer.state_dict(), fresh.scheduler.state_dict())
    with pytest.raises(ValueError, match="T_max=0"):
        fresh.load(tmp_path / "bad.npz")
    assert np.array_equal(fresh.model.params.data, before[0])
    assert fresh.optimizer.state_dict()["step"] == before[1]["step"] == 0
    assert fresh.scheduler.state_dict() == before[2] and fresh.epoch == 0
