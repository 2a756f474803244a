"""Every CUDA twin compiled to PTX for sm_80 and sm_90 and assembled by ptxas, without a GPU.

Needs numba-cuda with its NVVM (the ``cuda-check`` extra) and ``ptxas`` from a CUDA toolkit
on the PATH; skipped otherwise. Fails on a float64 instruction in a float32 kernel, on a
multiply-add left to NVVM's contraction (every one must be an explicit fma, as on the CPU),
on a division or square root that is not correctly rounded, and on any register spill.
"""

import importlib
import re
import shutil
import subprocess

import numba
import numpy as np
import pytest

from kernel_cases import KERNELS, make_case

cuda = pytest.importorskip("numba.cuda")


def _ptxas():
    """The path of ``ptxas``, or skip."""
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas (CUDA toolkit) is not on the PATH")
    return ptxas


def _compile(kernel, args, cc):
    """The PTX of a ``numba.cuda`` kernel for the types of ``args``, or skip."""
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, tuple(numba.typeof(a) for a in args), cc=cc)
    except Exception as error:  # no NVVM here: numba's CUDA target without the toolkit wheels
        pytest.skip(f"cannot compile PTX here ({type(error).__name__}: {str(error)[:120]})")
    return ptx


def _ptx(name, cc):
    module = KERNELS[name][0].__name__.rsplit(".", 1)[1]
    twin = getattr(importlib.import_module(f"fastopt.kernels.{module}_cuda"), name)
    _, _, mutated, args = make_case(name, 64, np.float32, np.random.default_rng(0), 2)
    return _compile(twin, (*mutated, *args), cc)


def assert_assembles_without_spills(ptxas, ptx, cc, tmp_path):
    """``ptxas -v`` for ``cc`` accepts the PTX and reports no spill stores or loads."""
    path = tmp_path / "kernel.ptx"
    path.write_text(ptx)
    result = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", str(path), "-o", str(tmp_path / "out.cubin")],
                            capture_output=True, text=True)
    if result.returncode != 0 and "Unsupported .version" in result.stderr:
        pytest.skip(f"this ptxas is older than the NVVM that wrote the PTX: {result.stderr.strip()[:160]}")
    assert result.returncode == 0, result.stderr[-2000:]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert spills and all(stores == "0" and loads == "0" for stores, loads in spills), result.stderr


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_ptx_is_float32_correctly_rounded_and_spill_free(name, cc, tmp_path):
    ptxas = _ptxas()
    ptx = _ptx(name, cc)
    instructions = [line.split("//")[0] for line in ptx.splitlines()]
    body = "\n".join(instructions)
    float64 = [line.split()[0] for line in instructions if re.search(r"\.f64\b", line)]
    if name.startswith("adam"):
        # Once per chunk, outside the element loop: lr / (1 - beta1**t) divided in float64,
        # as the host would, and rounded once to float32. Nothing else in float64.
        arithmetic = [op for op in float64 if op not in (".param", ".reg", "ld.param.f64", "ld.global.f64",
                                                         "ld.global.nc.f64")]
        assert arithmetic == ["div.rn.f64", "cvt.rn.f32.f64"], arithmetic
    else:
        assert not float64, "float64 arithmetic in a float32 kernel"
    assert not re.search(r"\bmad\.\w*f32|\bfma\.rn\.ftz", body)
    assert not re.search(r"\bdiv\.(approx|full)\.f32|\bsqrt\.approx\.f32|\brsqrt", body), \
        "a division or square root that is not correctly rounded"
    assert re.search(r"\bfma\.rn\.f32", body)
    assert_assembles_without_spills(ptxas, ptx, cc, tmp_path)


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["dropout_step", "dropout_mask"])
def test_dropout_ptx_is_float32_and_spill_free(name, cc, tmp_path):
    from fastopt.kernels import dropout_cuda

    ptxas = _ptxas()
    u = np.uint64
    buffer = np.zeros(8, np.float32 if name == "dropout_step" else np.uint8)
    args = [buffer, u(0), u(1), u(2), u(3), u(4), u(5)] + ([np.float32(1.25)] if name == "dropout_step" else [])
    ptx = _compile(getattr(dropout_cuda, name), args, cc)
    body = "\n".join(line.split("//")[0] for line in ptx.splitlines())
    assert not re.search(r"\.f64\b", body)
    assert re.search(r"\bmul\.hi\.u32|\bmul\.wide\.u32|\bmul\.lo\.s64|\bmul\.hi\.u64", body)
    assert_assembles_without_spills(ptxas, ptx, cc, tmp_path)


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["chunk_penalties", "fill"])
def test_buffer_kernels_compile_and_assemble_without_spills(name, cc, tmp_path):
    """The L2 penalty twin (float64 accumulation of float32 squares, by design) and fill."""
    from fastopt.kernels import buffers_cuda, penalty_cuda

    ptxas = _ptxas()
    param = np.zeros(8, np.float32)
    if name == "fill":
        kernel, args = buffers_cuda.fill, [param, np.float32(0)]
    else:
        kernel = penalty_cuda.chunk_penalties
        args = [param, np.zeros(2, np.uint64), np.zeros(1, np.int64), np.zeros(1), np.zeros(1)]
    ptx = _compile(kernel, args, cc)
    body = "\n".join(line.split("//")[0] for line in ptx.splitlines())
    if name == "chunk_penalties":
        assert re.search(r"\bcvt\.f64\.f32", body) and re.search(r"\bbar\.sync", body)
    else:
        assert not re.search(r"\.f64\b", body)
    assert_assembles_without_spills(ptxas, ptx, cc, tmp_path)
