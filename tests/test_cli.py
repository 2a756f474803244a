import io
import re

import pytest

from fastopt import cli


@pytest.mark.parametrize("optimizer, extra", [("adamw", []), ("adam", []),
                                              ("sgd", ["--momentum", "0.9"]),
                                              ("rmsprop", ["--lr", "0.01"]), ("adagrad", ["--lr", "1.0"]),
                                              ("adamax", []), ("nadam", ["--lr", "0.03"]), ("radam", []),
                                              # LAMB's steps are lr * ||w||: it nears the floor slowly
                                              ("lamb", ["--lr", "0.01", "--steps", "1000"])])
def test_demo_fits_the_model(optimizer, extra, capsys):
    assert cli.main(["demo", "--optimizer", optimizer, "--steps", "300", *extra]) == 0
    output = capsys.readouterr().out
    final = float(re.search(r"final loss (\S+)", output).group(1))
    assert final < 0.02  # the noise floor is 0.01; the model starts near 200


def test_demo_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--lr", "-1"])
    assert exit_info.value.code == 2
    assert "--lr" in capsys.readouterr().err


def test_schedule_command_draws_a_png(tmp_path, capsys):
    out = tmp_path / "lr.png"
    code = cli.main(["schedule", "cyclic", "--base_value", "0.001", "--max_value", "0.006",
                     "--step_size_up", "50", "--mode", "triangular2", "--steps", "300", "--out", str(out)])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "step 0: 0.001," in printed and "max 0.006 " in printed


def test_schedule_command_takes_list_arguments(capsys):
    assert cli.main(["schedule", "multi_step", "--init_value", "1.0", "--milestones", "[2, 4]",
                     "--gamma", "0.5", "--steps", "5"]) == 0
    assert "step 4: 0.25" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["schedule", "step_decay", "--init_value", "0.1", "--step_size", "0"], "step_size=0"),
    (["schedule", "step_decay", "--init_value", "0.1", "--step_size", "5", "--foo", "1"], "foo"),
    (["schedule", "step_decay", "--init_value"], "expected one argument"),
    (["schedule", "step_decay", "--step_size", "3"], "schedule step_decay needs --init_value"),
    (["schedule", "sawtooth"], "invalid choice"),
])
def test_schedule_command_refuses_bad_parameters(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
