"""Data-parallel training over MPI: launched with ``mpiexec -n 2`` and ``-n 4`` on this machine.

The MPI runs happen in tests/mpi_check.py and in ``fastopt train`` under mpiexec, never in the
pytest process. Where mpi4py or mpiexec is missing they skip, unless FASTOPT_REQUIRE_MPI is set
(as in CI), where they fail.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from fastopt import cli
from fastopt.distributed import SHARD_ALIGNMENT, launched_under_mpi, shard_bounds

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "mpi_check.py")


def _mpiexec():
    """``[mpiexec, flags...]`` for this interpreter's MPI, or skip (fail under CI)."""
    reason = None
    if importlib.util.find_spec("mpi4py") is None:
        reason = "mpi4py is not installed (pip install 'fastopt[mpi]')"
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if reason is None and exe is None:
        reason = "no mpiexec on PATH"
    if reason is not None:
        if os.environ.get("FASTOPT_REQUIRE_MPI"):
            pytest.fail(f"FASTOPT_REQUIRE_MPI is set but {reason}")
        pytest.skip(reason)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    # Open MPI refuses root and more ranks than cores unless told; MPICH's hydra has no such flags.
    flags = ["--oversubscribe", "--allow-run-as-root"] if "Open MPI" in version or "OpenRTE" in version else []
    return [exe, *flags]


def _environment():
    env = dict(os.environ)
    # 4 ranks on 2 cores: one kernel thread each, and ranks that yield while they wait.
    env.update(NUMBA_NUM_THREADS="1", OMPI_MCA_mpi_yield_when_idle="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")])))
    return env


def mpirun(ranks, *command, cwd=None, env=None):
    result = subprocess.run([*_mpiexec(), "-n", str(ranks), *command], capture_output=True, text=True,
                            env={**_environment(), **(env or {})}, cwd=cwd, timeout=600)
    assert result.returncode == 0, f"mpiexec -n {ranks} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module", params=[2, 4])
def equivalence(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"mpi{request.param}") / "equivalence.json"
    mpirun(request.param, sys.executable, CHECK, "equivalence", str(out))
    with open(out) as stream:
        return json.load(stream)


# -- without MPI -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 3567, 10**6 + 3])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7])
def test_shard_bounds_cover_the_buffer_contiguously(size, ranks):
    bounds = shard_bounds(size, ranks)
    assert len(bounds) == ranks and bounds[0][0] == 0 and bounds[-1][1] == size
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        assert stop == start
    for start, stop in bounds:
        assert start <= stop and (start % SHARD_ALIGNMENT == 0 or start == size)
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= SHARD_ALIGNMENT + size % SHARD_ALIGNMENT


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("sizes", [[10, 30, 40, 20], [5], [100, 1, 1, 1], [0, 7, 0, 9], [3] * 20])
def test_tensor_shard_bounds_cut_where_tensors_start(sizes, ranks):
    from fastopt import FlatParams
    from fastopt.distributed import tensor_shard_bounds

    params = FlatParams({f"t{k}": n for k, n in enumerate(sizes)})
    bounds = tensor_shard_bounds(params, ranks)
    starts = {params.segment(name)[0] for name in params} | {params.size}
    assert len(bounds) == ranks and bounds[0][0] == 0 and bounds[-1][1] == params.size
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        assert stop == start
    assert all(start <= stop and start in starts and stop in starts for start, stop in bounds)
    if sizes == [3] * 20:  # equal tensors: as even as whole tensors allow
        lengths = [stop - start for start, stop in bounds]
        assert max(lengths) - min(lengths) <= 3 * (1 if ranks > 1 else 0) + 3


def test_rows_of_a_batch_drop_as_in_the_whole_batch():
    """A rank's slice of a batch, placed with row_offset, gets the whole batch's dropout masks."""
    model = fastopt.MLP((9, 13, 4), dropout=0.4, seed=3, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((23, 9))
    whole = model.forward(x, training=True, step=5)
    model.backward(np.ones_like(whole))
    whole_grad = model.params.grad.copy()
    parts, grad = [], np.zeros_like(whole_grad)
    for first, last in [(0, 7), (7, 8), (8, 8), (8, 23)]:
        parts.append(model.forward(x[first:last], training=True, step=5, row_offset=first))
        model.backward(np.ones_like(parts[-1]))
        grad += model.params.grad
    # Equal to BLAS rounding (a matrix product of 7 rows may sum in another order than of 23).
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(grad, whole_grad, rtol=1e-12, atol=1e-12)
    shifted = model.forward(x[7:], training=True, step=5)  # no offset: other masks
    assert np.abs(shifted - whole[7:]).max() > 1e-3


def test_launch_is_read_from_the_environment(monkeypatch):
    for variable in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    assert not launched_under_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert not launched_under_mpi()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert launched_under_mpi()


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    from fastopt.distributed import ShardedOptimizer

    with pytest.raises(ImportError, match=r"mpi4py.*fastopt\[mpi\]"):
        ShardedOptimizer(fastopt.FlatParams({"w": 3}), fastopt.Adam)
    with pytest.raises(SystemExit):
        cli.main(["train", "--parallel", "zero", "--epochs", "1", "--no-progress"])
    assert "fastopt[mpi]" in capsys.readouterr().err


# -- under mpiexec ------------------------------------------------------------------------------


def test_n_ranks_match_one_process_on_the_whole_batch(equivalence):
    """100 steps of every optimizer family, batch of 37 split unevenly: the issue's bar is 1e-6
    relative; float64 agrees to rounding, float32 to a few float32 ulps."""
    import mpi_check

    assert len(equivalence["results"]) == 2 * 2 * len(mpi_check.CASES) == 2 * 36
    for result in equivalence["results"]:
        bound = 1e-12 if result["dtype"] == "float64" else 1e-6
        label = f"{result['optimizer']} {result['mode']} {result['dtype']}"
        assert result["steps"] == 100, label
        assert result["params_error"] < bound, label
        assert result["state_error"] < bound, label
        assert result["identical_on_ranks"], label
        assert result["penalty"] == pytest.approx(result["single_penalty"], rel=bound), label


def test_sharded_state_is_one_nth_per_rank(equivalence):
    import mpi_check

    ranks, size = equivalence["ranks"], equivalence["size"]
    starts = {start for start, _ in equivalence["segments"].values()} | {size}
    for result in equivalence["results"]:
        single, per_rank = result["single_state_bytes"], result["state_bytes"]
        if result["mode"] == "allreduce":
            assert per_rank == [single] * ranks
            continue
        if result["optimizer"] in mpi_check.WHOLE_TENSORS:  # whole tensors per rank: cut where one starts
            assert sum(per_rank) == single
            assert all(start in starts and stop in starts for start, stop in result["shards"]), result["shards"]
            continue
        assert sum(per_rank) == single
        buffers = single // (size * np.dtype(result["dtype"]).itemsize)
        slack = buffers * SHARD_ALIGNMENT * np.dtype(result["dtype"]).itemsize
        assert max(per_rank) <= single / ranks + slack, (result["optimizer"], per_rank)
        if single:
            assert max(per_rank) / single < 1 / ranks + 0.01


def test_shards_straddle_parameters_and_groups(equivalence):
    shards = equivalence["results"][0]["shards"]
    segments = equivalence["segments"]
    inner = [start for start, _ in shards[1:]]
    assert all(segments["w1"][0] < cut < segments["w1"][1] for cut in inner)
    assert equivalence["size"] % 2 == 1


def test_int8_and_bfloat16_state_shard_as_one_process(equivalence):
    """int8 and bfloat16 state (AdamW, centered RMSProp with momentum, LAMB) sharded by whole
    tensors and all-reduced: the same bits as one process (steps, codes, absmax, stochastic
    rounding), state dicts both ways, and a float32 state dict quantized on load as one process
    does."""
    results = equivalence["quantized"]
    assert len(results) == 12
    for label, result in results.items():
        assert result["same_params"] and result["same_state"], label
        assert result["continued"] and result["converted"], label
    starts = {0, 2800, 2870, 5870, 5875}
    for label in ("adamw int8 zero", "lamb int8 zero"):
        for start, stop in results[label]["shards"]:
            assert start in starts and stop in starts


def test_muon_on_n_ranks_matches_one_process(equivalence):
    """Muon's matrices whole on each rank (sharded) or everywhere (all-reduce): 30 steps, float64;
    and sharded Adafactor keeps the state of tensors with no elements, as one process does."""
    for mode in ("zero", "allreduce"):
        result = equivalence["muon"][mode]
        assert result["params_error"] < 1e-12 and result["state_error"] < 1e-12, (mode, result)
    empty = equivalence["muon"]["adafactor_empty"]
    assert empty["shapes_equal"] and empty["state_error"] < 1e-12 and empty["reload_error"] == 0, empty
    shards = equivalence["muon"]["zero"]["shards"]
    assert all(start in (0, 200, 500, 525) and stop in (0, 200, 500, 525) for start, stop in shards), shards


def test_tiny_buffers_leave_shards_empty(equivalence):
    tiny = equivalence["tiny"]
    assert tiny["shard"] == [[0, 0]] * (equivalence["ranks"] - 1) + [[0, 5]]
    assert tiny["params_error"] < 1e-12


def test_bad_input_is_refused_on_every_rank(equivalence):
    messages = equivalence["refusals"]
    assert len(messages) == equivalence["ranks"]
    assert all(m == messages[0] for m in messages)
    m = messages[0]
    assert "params differ between ranks" in m["layout_differs"]
    assert "not an instance" in m["not_a_class"]
    assert "comm='world'" in m["not_a_comm"]
    assert "momentum" in m["unknown_option"]
    assert "different parameter layout" in m["wrong_layout"]
    assert "exp_avg" in m["short_state"] and "(3567,)" in m["short_state"]
    assert m["unchanged_after_refusals"] is True


def test_checkpoint_of_4_ranks_resumes_in_2(tmp_path):
    path = tmp_path / "sharded.npz"
    mpirun(4, sys.executable, CHECK, "checkpoint", "save", str(path), str(tmp_path / "save.json"))
    mpirun(2, sys.executable, CHECK, "checkpoint", "resume", str(path), str(tmp_path / "resume.json"))
    saved = json.loads((tmp_path / "save.json").read_text())
    resumed = json.loads((tmp_path / "resume.json").read_text())
    assert saved["ranks"] == 4 and resumed["ranks"] == 2
    assert saved["steps"] == 50 and resumed["steps"] == 100
    assert saved["params_error"] < 1e-12 and resumed["params_error"] < 1e-12
    # The file is a single process's state dict: a plain optimizer loads it too.
    from fastopt.train.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(path)
    import mpi_check

    params = mpi_check.make_params(np.float64)
    plain = fastopt.AdamW(params, groups=mpi_check.GROUPS)
    plain.load_state_dict(dict(meta["optimizer"], state={k[6:]: v for k, v in arrays.items() if k.startswith("state.")}))
    assert plain.step_count == 50 and plain.config.amsgrad


def test_fastopt_train_under_mpiexec(tmp_path):
    """The same command line under mpiexec: rank 0 alone prints; 4 ranks, then a resume in 2,
    end where one process does."""
    args = ["train", "--epochs", "2", "--hidden", "32", "--no-progress", "--dropout", "0.2"]
    fastopt_cli = [sys.executable, "-m", "fastopt.cli"]
    four = mpirun(4, *fastopt_cli, *args, "--checkpoint", str(tmp_path / "ranks"))
    assert four.count("fastopt train:") == 1 and "data-parallel (zero) over 4 ranks" in four
    two = mpirun(2, *fastopt_cli, *args[:1], "--epochs", "3", *args[3:], "--checkpoint", str(tmp_path / "ranks"),
                 "--resume", "--replan", "--parallel", "allreduce")
    assert two.count("test accuracy") == 1 and "data-parallel (allreduce) over 2 ranks" in two
    for extra in ([], ["--resume", "--replan"]):  # one process, the same two runs
        epochs = "3" if extra else "2"
        single = subprocess.run([*fastopt_cli, *args[:1], "--epochs", epochs, *args[3:], "--checkpoint",
                                 str(tmp_path / "single"), *extra], capture_output=True, text=True,
                                env=_environment())
        assert single.returncode == 0, single.stderr
    from fastopt.train.checkpoint import load_checkpoint

    ranks, ranks_meta = load_checkpoint(tmp_path / "ranks" / "checkpoint.npz")
    alone, alone_meta = load_checkpoint(tmp_path / "single" / "checkpoint.npz")
    assert ranks_meta["epoch"] == alone_meta["epoch"] == 3
    for name in alone:
        np.testing.assert_allclose(ranks[name], alone[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for mine, theirs in zip(ranks_meta["history"], alone_meta["history"]):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-9)


def test_gpu_params_are_staged_through_the_host_with_the_same_bits(tmp_path):
    """Parameters on the (simulated) GPU, collectives staged through host memory: the same
    parameters and state as the same run on the CPU, bit for bit, both modes; and a
    data-parallel Trainer over an MLP on the GPU (NumPy standing in for CuPy) ends where the
    same run on the CPU does."""
    out = tmp_path / "gpu.json"
    mpirun(2, sys.executable, "-W", "ignore", CHECK, "gpu", str(out), env={"NUMBA_ENABLE_CUDASIM": "1"})
    report = json.loads(out.read_text())
    assert report["ranks"] == 2
    for rank_results in report["results"]:
        *optimizers, trainer = rank_results
        assert len(optimizers) == 4 and trainer["optimizer"] == "trainer"
        assert trainer["params_equal"] and trainer["history_equal"], trainer
        for result in optimizers:
            assert result["params_equal"] and result["state_equal"], result
            assert result["penalty"][1] == pytest.approx(result["penalty"][0], rel=1e-12)
