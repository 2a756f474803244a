import io
import re

import pytest

from fastopt import cli


@pytest.mark.parametrize("optimizer, extra", [("adamw", []), ("adam", []),
                                              ("sgd", ["--momentum", "0.9"]),
                                              ("rmsprop", ["--lr", "0.01"])])
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
