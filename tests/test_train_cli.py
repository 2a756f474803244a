"""``fastopt train`` and ``fastopt predict`` on real data exported to CSV as it comes (scikit-
learn's bundled sets: raw feature scales, names as labels, an integer-valued regression target),
every refusal one line with exit status 2, and honest resumes (issue 19)."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fastopt import cli

datasets = pytest.importorskip("sklearn.datasets")


def export(path, bunch, names=False):
    """A scikit-learn data set as a CSV file with a header row, values as they are."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        features = [str(name).replace(" ", "_") for name in bunch.feature_names]
        writer.writerow([*features, "target"])
        for row, target in zip(bunch.data, bunch.target):
            label = bunch.target_names[target] if names else repr(target.item())
            writer.writerow([repr(float(v)) for v in row] + [label])
    return str(path)


def run(capsys, *arguments):
    code = cli.main(["train", "--no-progress", *arguments])
    return code, capsys.readouterr().out


def test_breast_cancer_as_it_comes_reaches_95_percent(tmp_path, capsys):
    data = export(tmp_path / "cancer.csv", datasets.load_breast_cancer())
    code, output = run(capsys, "--data", data)
    assert code == 0 and "classification (cross_entropy)" in output and "2 classes" in output
    assert float(re.search(r"test accuracy (\S+),", output).group(1)) >= 0.95


def test_wine_as_it_comes_reaches_90_percent(tmp_path, capsys):
    data = export(tmp_path / "wine.csv", datasets.load_wine())
    code, output = run(capsys, "--data", data)
    assert code == 0 and float(re.search(r"test accuracy (\S+),", output).group(1)) >= 0.90


@pytest.mark.parametrize("optimizer", ["adagrad", "adamax", "nadam", "radam", "lion", "lamb", "adafactor"])
def test_the_added_optimizers_train_wine_with_their_default_learning_rate(optimizer, tmp_path, capsys):
    data = export(tmp_path / "wine.csv", datasets.load_wine())
    code, output = run(capsys, "--data", data, "--optimizer", optimizer)
    assert code == 0 and f"{optimizer} lr=" in output
    assert float(re.search(r"test accuracy (\S+),", output).group(1)) >= 0.90


def test_lamb_trains_with_int8_state_and_adafactor_refuses_it(tmp_path, capsys):
    data = export(tmp_path / "wine.csv", datasets.load_wine())
    code, output = run(capsys, "--data", data, "--optimizer", "lamb", "--state-dtype", "int8")
    assert code == 0 and "(int8 state)" in output
    assert float(re.search(r"test accuracy (\S+),", output).group(1)) >= 0.90
    for optimizer, state in (("adafactor", "int8"), ("adafactor", "bfloat16")):
        with pytest.raises(SystemExit):
            run(capsys, "--data", data, "--optimizer", optimizer, "--state-dtype", state)
        assert f"--state-dtype {state} is for the element-wise optimizers and lamb; {optimizer} keeps" \
            in capsys.readouterr().err


def test_iris_with_species_names_predicts_names(tmp_path, capsys):
    iris = datasets.load_iris()
    data = export(tmp_path / "iris.csv", iris, names=True)
    folder = tmp_path / "run"
    code, output = run(capsys, "--data", data, "--checkpoint", str(folder), "--epochs", "60")
    assert code == 0 and "3 classes" in output
    assert float(re.search(r"test accuracy (\S+),", output).group(1)) >= 0.90
    predictions = tmp_path / "predictions.csv"
    assert cli.main(["predict", "--checkpoint", str(folder), "--data", data, "--out", str(predictions)]) == 0
    lines = predictions.read_text().splitlines()
    assert lines[0] == "prediction" and len(lines) == 151
    assert set(lines[1:]) <= {"setosa", "versicolor", "virginica"}
    truth = [iris.target_names[t] for t in iris.target]
    assert np.mean([a == b for a, b in zip(lines[1:], truth)]) >= 0.9


def test_diabetes_needs_to_be_told_its_task_and_then_regresses(tmp_path, capsys):
    data = export(tmp_path / "diabetes.csv", datasets.load_diabetes())
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "--data", data)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--task" in error and "214 distinct whole numbers" in error
    code, output = run(capsys, "--data", data, "--task", "regression", "--epochs", "60")
    assert code == 0 and "regression (mse)" in output
    r2, rmse = map(float, re.search(r"test r2 (\S+), test rmse (\S+) ", output).groups())
    assert r2 >= 0.35 and 40 < rmse < 80  # in the target's own units (it spans 25..346)


@pytest.mark.parametrize("loss", ["mae", "huber"])
def test_regression_losses(tmp_path, capsys, loss):
    data = export(tmp_path / "diabetes.csv", datasets.load_diabetes())
    code, output = run(capsys, "--data", data, "--task", "regression", "--loss", loss, "--epochs", "40")
    assert code == 0 and f"regression ({loss})" in output
    assert float(re.search(r"test r2 (\S+),", output).group(1)) >= 0.3


def test_predict_on_held_out_rows_equals_the_trainer(tmp_path, capsys):
    """The CLI's predictions are the trained model's on the standardised rows, un-scaled."""
    from fastopt import MLP, Trainer, losses
    from fastopt.train import data as tables
    from fastopt.train.checkpoint import load_checkpoint

    bunch = datasets.load_diabetes()
    data = export(tmp_path / "diabetes.csv", bunch)
    folder = tmp_path / "run"
    assert run(capsys, "--data", data, "--task", "regression", "--epochs", "5", "--checkpoint", str(folder))[0] == 0
    held_out = tmp_path / "new.csv"
    with open(data) as source, open(held_out, "w") as target:  # the rows without their target column
        for line in list(source)[:41]:
            target.write(",".join(line.rstrip("\n").split(",")[:-1]) + "\n")
    assert cli.main(["predict", "--checkpoint", str(folder / "checkpoint.npz"), "--data", str(held_out)]) == 0
    printed = [float(v) for v in capsys.readouterr().out.splitlines()[1:]]
    arrays, meta = load_checkpoint(folder / "checkpoint.npz")
    model = MLP(meta["model"]["sizes"], activation=meta["model"]["activation"], seed=meta["model"]["seed"])
    model.params.data[:] = arrays["params"]
    trainer = Trainer(model, fastopt_adam(model), losses.mean_squared_error)
    scaling = tables.Scaling.from_dict(meta["run"]["scaling"])
    outputs = trainer.predict(scaling.apply(bunch.data[:40]).astype(np.float32))
    expected = tables.Scaling.from_dict(meta["run"]["target_scaling"]).undo(outputs.astype(np.float64)).reshape(-1)
    assert np.array_equal(np.array(printed), expected)


def fastopt_adam(model):
    from fastopt import Adam

    return Adam(model.params)


def test_labels_of_any_kind_become_classes(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((120, 3))
    y = np.where(x[:, 0] > 0, 2_000_000_000, 1)  # sparse, 1-based: two classes, not 2e9 + 1
    path = tmp_path / "sparse.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,c,label", comments="", fmt="%.10g")
    code, output = run(capsys, "--data", str(path), "--epochs", "10")
    assert code == 0 and "2 classes" in output and "MLP (3, 128, 2)" in output


def test_scaling_can_be_turned_off_and_is_said(tmp_path, capsys):
    data = export(tmp_path / "wine.csv", datasets.load_wine())
    code, output = run(capsys, "--data", data, "--no-scale", "--epochs", "2")
    assert code == 0 and "features not scaled" in output


def checkpoint_with(folder, **changes):
    """A copy of the checkpoint in ``folder`` with its metadata changed."""
    from fastopt.train.checkpoint import load_checkpoint, save_checkpoint

    arrays, meta = load_checkpoint(folder / "checkpoint.npz")
    meta.pop("format")
    save_checkpoint(folder / "checkpoint.npz", arrays, {**meta, **changes})


@pytest.fixture
def digits_csv(tmp_path):
    return export(tmp_path / "digits.csv", datasets.load_digits())


@pytest.mark.parametrize("arguments, message", [
    (["--plot", "nodir/curves.png"], "--plot 'nodir/curves.png': the folder"),
    (["--plot", "{tmp}/curves.xyz"], "xyz is not an image format"),
    (["--checkpoint", "{tmp}/afile"], "is a file; give a folder"),
    (["--test-fraction", "1"], "--test-fraction must lie in (0, 1), got 1.0"),
    (["--test-fraction", "0"], "--test-fraction must lie in (0, 1), got 0.0"),
    (["--validation-fraction", "0.99999"], "each part needs a row"),
    (["--data", "{tmp}"], "is a directory"),
    (["--data", "{tmp}/truncated.npz"], "is not a readable .npz file"),
    (["--data", "{tmp}/flat.npz"], "X must be 2-D"),
    (["--hidden", "12,x"], "--hidden must be widths"),
    (["--task", "regression", "--loss", "cross_entropy"], "--loss cross_entropy is not for a regression"),
    (["--resume", "--checkpoint", "{tmp}/empty"], "no checkpoint at"),
])
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(arguments, message, tmp_path, capsys, digits_csv):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "truncated.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(tmp_path / "flat.npz", X=np.ones(10), y=np.zeros(10))
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    if "--data" not in arguments:
        arguments = ["--data", digits_csv, *arguments]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, *arguments, "--epochs", "1")
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error, error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("content, message", [
    (b"", "is not a readable fastopt checkpoint"),
    (b"PK\x03\x04 truncated", "is not a readable fastopt checkpoint"),
    (None, "not a fastopt checkpoint (no metadata)"),
])
def test_resume_from_a_broken_or_foreign_file_is_one_line(content, message, tmp_path, capsys, digits_csv):
    folder = tmp_path / "run"
    folder.mkdir()
    if content is None:
        np.savez(folder / "checkpoint.npz", a=np.ones(2))
    else:
        (folder / "checkpoint.npz").write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "--data", digits_csv, "--checkpoint", str(folder), "--resume")
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("changes, message", [
    ({"epoch": -2}, "epoch must be an int >= 0, got -2"),
    ({"epoch": 2.5}, "epoch must be an int >= 0, got 2.5"),
    ({"history": 5}, "history must be a list"),
])
def test_checkpoint_metadata_is_checked_on_load(changes, message, tmp_path, capsys, digits_csv):
    folder = tmp_path / "run"
    common = ["--data", digits_csv, "--checkpoint", str(folder), "--epochs", "2"]
    assert run(capsys, *common)[0] == 0
    checkpoint_with(folder, **changes)
    with pytest.raises(SystemExit):
        run(capsys, *common, "--resume")
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("state", [[], ["--state-dtype", "int8"], ["--state-dtype", "bfloat16"]],
                         ids=["float32", "int8", "bfloat16"])
def test_resume_with_the_same_flags_continues_bit_for_bit(tmp_path, capsys, digits_csv, monkeypatch, state):
    """A 4-epoch run interrupted after epoch 2 (its checkpoint written), resumed with no flags at
    all (the checkpoint holds them), ends where the uninterrupted run does, bit for bit: with
    float32, int8 and bfloat16 optimizer state."""
    from fastopt.train import trainer as trainers
    from fastopt.train.checkpoint import load_checkpoint

    common = ["--data", digits_csv, "--epochs", "4", "--lr", "0.003", "--dropout", "0.2", *state]
    assert run(capsys, *common, "--checkpoint", str(tmp_path / "whole"))[0] == 0
    save = trainers.Checkpoint.on_epoch_end

    def interrupted(self, trainer, record):
        save(self, trainer, record)
        if trainer.epoch == 2:
            raise trainers.StopTraining("interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(trainers.Checkpoint, "on_epoch_end", interrupted)
        assert run(capsys, *common, "--checkpoint", str(tmp_path / "split"))[0] == 0
    assert load_checkpoint(tmp_path / "split" / "checkpoint.npz")[1]["epoch"] == 2
    code, output = run(capsys, "--checkpoint", str(tmp_path / "split"), "--resume")
    assert code == 0 and "resumed from" in output and "at epoch 2" in output
    ends = [load_checkpoint(tmp_path / name / "checkpoint.npz") for name in ("whole", "split")]
    assert np.array_equal(ends[0][0]["params"], ends[1][0]["params"])
    assert ends[0][1]["history"] == ends[1][1]["history"]


def test_resume_refuses_changed_flags_naming_each_and_replans_when_asked(tmp_path, capsys, digits_csv):
    folder = tmp_path / "run"
    common = ["--data", digits_csv, "--checkpoint", str(folder)]
    assert run(capsys, *common, "--epochs", "2", "--hidden", "32")[0] == 0
    with pytest.raises(SystemExit):
        run(capsys, *common, "--resume", "--hidden", "64", "--dropout", "0.5")
    error = capsys.readouterr().err
    assert "--hidden '32' there, not '64'" in error and "--dropout 0.1 there, not 0.5" in error
    with pytest.raises(SystemExit):
        run(capsys, *common, "--resume", "--lr", "0.5", "--epochs", "4")
    error = capsys.readouterr().err
    assert "--lr differs from the checkpoint's 0.002" in error and "--epochs differs" in error and "--replan" in error
    code, output = run(capsys, *common, "--resume", "--lr", "0.005", "--epochs", "4", "--schedule", "constant",
                       "--replan")
    assert code == 0 and "replanned from epoch 2" in output and "lr=0.005" in output
    history = [json.loads(json.dumps(r)) for r in load_history(folder)]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and history[2]["lr"] == 0.005


def load_history(folder):
    from fastopt.train.checkpoint import load_checkpoint

    return load_checkpoint(folder / "checkpoint.npz")[1]["history"]


@pytest.mark.parametrize("arguments, message", [
    (["schedule", "constant", "--init_value", "1", "--steps", "1"], None),
    (["bench", "--sizes", "inf"], "--sizes must be finite numbers"),
    (["schedule", "cosine_warm_restarts", "--base_value", "0.1", "--T_0", "5"], "unrecognized arguments"),
])
def test_other_commands_refuse_in_one_line(arguments, message, capsys):
    if message is None:
        assert cli.main(arguments) == 0
        return
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_version_and_schedule_help_list_arguments():
    version = subprocess.run([sys.executable, "-m", "fastopt.cli", "--version"], capture_output=True, text=True)
    assert re.fullmatch(r"fastopt \d+\.\d+\.\d+\n", version.stdout)
    helped = subprocess.run([sys.executable, "-m", "fastopt.cli", "schedule", "cosine_warm_restarts", "--help"],
                            capture_output=True, text=True)
    assert "--init_value" in helped.stdout and "--T_mult" in helped.stdout and "default 1" in helped.stdout


def test_schedule_with_a_warm_up_in_front(capsys):
    assert cli.main(["schedule", "cosine_annealing", "--init_value", "0.1", "--T_max", "10", "--warmup", "4",
                     "--steps", "8"]) == 0
    assert "step 0: 0," in capsys.readouterr().out
