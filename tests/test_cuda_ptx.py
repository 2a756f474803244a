"""Every CUDA kernel, float32 and float64, compiled to PTX for sm_80 and sm_90 and assembled by
ptxas, without a GPU.

Needs numba-cuda with its NVVM (the ``cuda-check`` extra) and ``ptxas`` from a CUDA toolkit on
the PATH. Whether they are here is decided once, before anything compiles; where they are, any
error while compiling or assembling fails the test (CI has both, so there this file never
skips).

What it holds the kernels to:

* a float32 kernel does float64 arithmetic only in a tile's prologue (each group's learning
  rate, derived as the host would), never per element;
* every division and square root is correctly rounded (no ``.approx``, no ``rsqrt``);
* nothing is contracted: every fused multiply-add in the machine code is one the source wrote
  as ``fma``. NVVM and ptxas both fuse a plain ``a * b + c`` even with ``fastmath=False``,
  where the CPU rounds twice, so a contraction would break CPU == GPU silently. Checked twice:
  NVVM's PTX with contraction off (``-fma=0``) is the same as its default PTX, and ptxas's
  machine code with ``--fmad=false`` is the same as with its default ``--fmad=true``;
* no register spills (``ptxas -v``).
"""

import re
import shutil
import subprocess
import struct

import numba
import numpy as np
import pytest

from kernel_cases import FACTORED, MATRIXWISE, TENSORWISE, make_case, make_factored_case, make_matrix_case, make_tensor_case


def _missing_tools():
    """Why this machine cannot compile and assemble CUDA kernels, or None."""
    try:
        from numba.cuda.cudadrv import nvvm
    except ImportError:
        return "numba-cuda is not installed (the cuda-check extra)"
    if not nvvm.is_available():
        return "numba-cuda finds no NVVM (the cuda-check extra brings nvidia-nvvm)"
    if shutil.which("ptxas") is None:
        return "ptxas (CUDA toolkit) is not on the PATH"
    return None


MISSING = _missing_tools()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

CCS = pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def rule_names():
    from kernel_cases import ELEMENTWISE

    return ELEMENTWISE


def compile_twice(function, args, cc):
    """``(ptx, ptx_without_contraction)``: NVVM's PTX of a kernel for the types of ``args``, as
    numba-cuda compiles it, and the same LLVM IR compiled again with ``-fma=0``."""
    from numba.cuda import compiler
    from numba.cuda.cudadrv import nvrtc, nvvm

    types = tuple(numba.typeof(a) for a in args)
    library, _ = compiler._compile_pyfunc_with_fixup(function, types, device=False, abi="numba", cc=cc)
    options = {**library._nvvm_options, "arch": nvrtc.get_arch_option(*cc), "fma": False}
    uncontracted = nvvm.compile_ir(library.llvm_strs, **options).decode().strip("\x00").strip()
    return library.get_asm_str(cc=cc), uncontracted


def instructions(ptx):
    """The PTX's instruction lines, without comments and header."""
    lines = (line.split("//")[0].strip() for line in ptx.splitlines())
    return [line for line in lines if line and not line.startswith((".version", ".target", ".address_size"))]


def contraction_free(ptx):
    """:func:`instructions` with the ``.rn`` that NVVM writes on every ``mul``/``add``/``sub``
    under ``-fma=0`` (to keep ptxas from fusing them) taken off, so that the two compilations
    compare equal unless the default one turned a multiply and an add into an ``fma``."""
    return [re.sub(r"^(mul|add|sub)\.rn\.(f32|f64)", r"\1.\2", line) for line in instructions(ptx)]


def text_sections(cubin):
    """The machine code of an ELF cubin: ``{section name: bytes}`` of its ``.text.*`` sections
    (the rest records, among other things, the options ptxas was given)."""
    data = cubin.read_bytes()
    section_headers, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, section_headers + k * entry_size) for k in range(count)]
    names_offset = headers[names_index][4]

    def name(offset):
        start = names_offset + offset
        return data[start:data.index(b"\0", start)].decode()

    return {name(h[0]): data[h[4]:h[4] + h[5]] for h in headers if name(h[0]).startswith(".text")}


def assemble(ptx, cc, tmp_path, *flags):
    """``(ptxas -v stderr, .text sections)`` of the PTX for ``cc``; fails if ptxas does."""
    source, cubin = tmp_path / "kernel.ptx", tmp_path / f"kernel{''.join(flags)}.cubin"
    source.write_text(ptx)
    result = subprocess.run(["ptxas", "-v", f"-arch=sm_{cc[0]}{cc[1]}", *flags, str(source), "-o", str(cubin)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr, text_sections(cubin)


def check_kernel(function, args, cc, tmp_path):
    """Compile, assemble and hold ``function`` to the module docstring's rules; return the PTX
    body (comments stripped) for kernel-specific checks."""
    ptx, uncontracted = compile_twice(function, args, cc)
    assert contraction_free(ptx) == contraction_free(uncontracted), \
        "NVVM contracted a multiply and an add: write fma(...) or mul(...) in the source"
    stderr, text = assemble(ptx, cc, tmp_path)
    _, text_unfused = assemble(ptx, cc, tmp_path, "--fmad=false")
    assert text and text == text_unfused, \
        "ptxas fuses a multiply into an add that the CPU rounds twice: write fma(...) or mul(...)"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", stderr)
    assert spills and all(stores == "0" and loads == "0" for stores, loads in spills), stderr
    body = "\n".join(instructions(ptx))
    assert not re.search(r"\bdiv\.(approx|full)\.|\bsqrt\.approx\.|\brsqrt|\bmad\.\w*f(32|64)|\.ftz", body), \
        "a division or square root that is not correctly rounded, or flushed subnormals"
    return body


#: How many float64 operations a rule's prologue makes at most, where more than 4: NAdam's
#: lr_k and its two coefficients (two operations each), NAdamW's decay factor too.
PROLOGUE_COUNT = {"nadam": 5, "nadamw": 7}


@CCS
@DTYPES
@pytest.mark.parametrize("name", rule_names())
def test_rule_kernel_rounds_as_written(name, dtype, cc, tmp_path):
    from fastopt.kernels import cuda

    case, _ = make_case(name, 64, dtype, np.random.default_rng(0), 2)
    body = check_kernel(cuda.rule_kernel(case.rule).py_func, case.arguments(), cc, tmp_path)
    width = "32" if dtype == np.float32 else "64"
    assert re.search(rf"\bfma\.rn\.f{width}\b", body), "the rule's explicit fmas are missing"
    if dtype == np.float32:
        # float64 only in a tile's prologue, once: lr * lr_factor, Adam's step size and AdamW's
        # decay derived as the host would, and each float64 scalar and group value rounded once
        # to float32. So at most one conversion per scalar and group column, and a few
        # operations: a per-element pass (or an unrolled copy of one) would show several.
        arithmetic = [line.split()[0] for line in body.splitlines()
                      if re.search(r"\.f64\b", line) and not line.split()[0].startswith((".", "ld.", "mov."))]
        conversions = arithmetic.count("cvt.rn.f32.f64")
        others = [op for op in arithmetic if op != "cvt.rn.f32.f64"]
        assert conversions <= len(case.rule.scalars) + len(case.rule.group), arithmetic
        assert set(others) <= {"mul.f64", "mul.rn.f64", "div.rn.f64", "sub.f64"}, arithmetic
        assert len(others) <= PROLOGUE_COUNT.get(name.split("_")[0], 4), arithmetic



@CCS
@DTYPES
@pytest.mark.parametrize("name", TENSORWISE)
def test_tensorwise_kernels_round_as_written(name, dtype, cc, tmp_path):
    """The two passes and the per-tensor sums of a rule with per-tensor sums (LAMB)."""
    from fastopt.kernels import cuda

    case, _ = make_tensor_case(name, [64, 300], dtype, np.random.default_rng(0))
    norms, steps = cuda.tensorwise_kernels(case.rule)
    body = check_kernel(norms.py_func, (*case.arguments()[:7], case.partial), cc, tmp_path)
    width = "32" if dtype == np.float32 else "64"
    assert re.search(rf"\bfma\.rn\.f{width}\b", body), "the rule's explicit fmas are missing"
    assert re.search(r"\bbar\.sync\b", body), "the block's tree needs its barriers"
    check_kernel(steps.py_func, (case.param, case.state, case.bounds, case.groups, case.table, case.scalars,
                                 case.tile_tensor, case.sums), cc, tmp_path)
    check_kernel(cuda.tensorwise_sums.py_func, (case.groups, case.tensor_tiles, case.partial, case.sums), cc,
                 tmp_path)


@CCS
@DTYPES
@pytest.mark.parametrize("name", MATRIXWISE)
def test_matrixwise_kernels_round_as_written(name, dtype, cc, tmp_path):
    """The two element passes of a rule that transforms each matrix (Muon): the momentum into
    the scratch buffer, and the step; float32 does float64 arithmetic only per tile."""
    from fastopt.kernels import cuda

    case, _ = make_matrix_case(name, [(8, 8), (30, 10)], dtype, np.random.default_rng(0))
    first, second = cuda.matrix_kernels(case.rule)
    width = "32" if dtype == np.float32 else "64"
    for kernel, args in ((first, (*case.arguments(), case.work)),
                         (second, (case.param, case.work, *case.arguments()[3:7], case.tile_tensor,
                                   case.matrices.dims))):
        body = check_kernel(kernel.py_func, args, cc, tmp_path)
        assert re.search(rf"\bfma\.rn\.f{width}\b", body), "the rule's explicit fmas are missing"
        if dtype == np.float32:
            loop = body[body.index("\n", body.rindex("cvt.rn.f32.f64")):]  # after the tile's last rounding
            assert not re.search(r"\.f64\b", loop), "float64 arithmetic in the element loop"


@CCS
@DTYPES
@pytest.mark.parametrize("name", FACTORED)
def test_factored_kernels_round_as_written(name, dtype, cc, tmp_path):
    """The six stages of a rule with factored state (Adafactor)."""
    from fastopt.kernels import cuda

    case, _ = make_factored_case(name, [(8, 8), (300,), (2, 3, 4)], dtype, np.random.default_rng(0))
    layout = case.layout
    rows = (layout.row_start, layout.row_length, layout.row_tensor, layout.row_factor, layout.row_cols)
    blocks = (layout.block_start, layout.block_width, layout.block_stride, layout.block_rows, layout.block_out,
              layout.block_tensor)
    front = (case.param, case.grad, case.groups, case.table, case.scalars, case.factors)
    means, row_sums, col_sums, values = (np.zeros(layout.means, dtype), np.zeros((layout.row_start.size, 2)),
                                         np.zeros(layout.size), np.zeros((layout.tensor_numel.size, 2)))
    arguments = (
        (*front, case.tensor_tiles, *rows, row_sums),
        (case.grad, case.groups, case.tensor_tiles, *blocks, col_sums),
        (case.param, case.groups, case.table, case.scalars, case.factors, means, case.tensor_tiles, layout.tensor_rows,
         layout.tensor_numel, layout.tensor_info, layout.row_factor, row_sums, col_sums, values),
        (*front, means, case.tensor_tiles, *rows, layout.row_mean, row_sums),
        (case.groups, case.scalars, case.tensor_tiles, layout.tensor_rows, layout.tensor_numel, row_sums, values),
        (*front, means, case.tensor_tiles, *rows, layout.row_mean, values))
    width = "32" if dtype == np.float32 else "64"
    bodies = [check_kernel(kernel.py_func, args, cc, tmp_path)
              for kernel, args in zip(cuda.factored_kernels(case.rule), arguments)]
    assert re.search(rf"\bfma\.rn\.f{width}\b", bodies[5]), "the step's explicit fma is missing"
    assert re.search(r"\bbar\.sync\b", bodies[0]) and re.search(r"\bbar\.sync\b", bodies[3]), "the rows' trees"
    assert re.search(rf"\bsqrt\.rn\.f{width}\b", bodies[5]) and re.search(rf"\bdiv\.rn\.f{width}\b", bodies[5])


@CCS
@pytest.mark.parametrize("name", TENSORWISE)
def test_tensorwise_quantized_kernels_round_as_written(name, cc, tmp_path):
    """The two passes of a rule with per-tensor sums over int8 state (the rule's and the map's
    fmas in float32 in both, the lanes' and the blocks' trees, the codes' conversion) and over
    bfloat16 state (the Philox products in the second)."""
    from fastopt.kernels import cuda, quantized

    case, _ = make_tensor_case(name, [64, 300], np.float32, np.random.default_rng(0))
    codes, absmax = quantized.encode_reference(case.state, case.bounds, case.rule.state)
    norms, steps = cuda.encoded_tensorwise_kernels(case.rule, "int8")
    arguments = (case.param, codes, absmax, case.grad, case.bounds, case.groups, case.table, case.scalars)
    u = np.uint64
    first = check_kernel(norms.py_func, (*arguments, case.partial), cc, tmp_path)
    second = check_kernel(steps.py_func, (*arguments, u(1), u(2), u(3), u(4), case.tile_tensor, case.sums), cc,
                          tmp_path)
    for body in (first, second):
        assert re.search(r"\bfma\.rn\.f32\b", body) and re.search(r"\bbar\.sync\b", body)
    assert re.search(r"\bcvt\.rzi\.u32\.f32|\bcvt\.rzi\.u64\.f32", second), "the code's conversion"
    bits = quantized.round_bfloat16_nearest(case.state)
    norms, steps = cuda.encoded_tensorwise_kernels(case.rule, "bfloat16")
    arguments = (case.param, bits, bits, case.grad, case.bounds, case.groups, case.table, case.scalars)
    first = check_kernel(norms.py_func, (*arguments, case.partial), cc, tmp_path)
    second = check_kernel(steps.py_func, (*arguments, u(1), u(2), u(3), u(4), case.tile_tensor, case.sums), cc,
                          tmp_path)
    assert re.search(r"\bfma\.rn\.f32\b", first) and re.search(r"\bbar\.sync\b", first)
    assert re.search(r"\bmul\.(hi|wide)\.u32|\bmul\.lo\.s64|\bmul\.hi\.u64", second), "no Philox products"


@CCS
@pytest.mark.parametrize("name", ["adamw_step", "adam_amsgrad_step", "sgd_momentum_step", "rmsprop_centered_momentum_step"])
def test_quantized_state_kernels_round_as_written(name, cc, tmp_path):
    """The int8 and bfloat16 state kernels of a rule with one, two and three state rows: the
    rule's fmas, the map's fma, the blocks' tree and the Philox products; float64 only in the
    prologue."""
    from fastopt.kernels import cuda, quantized

    case, segments = make_case(name, 64, np.float32, np.random.default_rng(0), 2)
    blocks, block_groups = quantized.block_table(segments)
    codes, absmax = quantized.encode_reference(case.state, blocks, case.rule.state)
    int8 = check_kernel(cuda.int8_kernel(case.rule).py_func,
                        (case.param, codes, absmax, case.grad, blocks, block_groups, case.table, case.scalars,
                         *[np.uint64(0)] * 4), cc, tmp_path)
    assert re.search(r"\bfma\.rn\.f32\b", int8) and re.search(r"\bbar\.sync\b", int8)
    assert re.search(r"\bcvt\.rzi\.u32\.f32|\bcvt\.rzi\.u64\.f32", int8), "the code's conversion"
    bits = quantized.round_bfloat16_nearest(case.state)
    u = np.uint64
    bfloat16 = check_kernel(cuda.bfloat16_kernel(case.rule).py_func,
                            (case.param, bits, case.grad, case.bounds, case.groups, case.table, case.scalars,
                             u(1), u(2), u(3), u(4)), cc, tmp_path)
    assert re.search(r"\bmul\.(hi|wide)\.u32|\bmul\.lo\.s64|\bmul\.hi\.u64", bfloat16), "no Philox products"
    # bfloat16 parameters, with float32 and with bfloat16 state: the parameters' bits widened by
    # a shift, the same arithmetic
    param_bits, grad_bits = quantized.round_bfloat16_nearest(case.param), quantized.round_bfloat16_nearest(case.grad)
    params = [check_kernel(cuda.rounded_kernel(case.rule, kind, True).py_func,
                           (param_bits, state, grad_bits, case.bounds, case.groups, case.table, case.scalars,
                            u(1), u(2), u(3), u(4)), cc, tmp_path)
              for kind, state in ((None, case.state), ("bfloat16", bits))]
    params.append(check_kernel(cuda.int8_kernel(case.rule, True).py_func,
                               (param_bits, codes, absmax, grad_bits, blocks, block_groups, case.table, case.scalars,
                                u(1), u(2), u(3), u(4)), cc, tmp_path))
    assert re.search(r"\bmul\.(hi|wide)\.u32|\bmul\.lo\.s64|\bmul\.hi\.u64", params[-1]), "no Philox products"
    for body in params:
        assert re.search(r"\bshl\.b32|\bshl\.b64|\bprmt\.b32|\bcvt\.u32\.u16", body), "no widening of the bits"
    for body in (int8, bfloat16, *params):
        arithmetic = [line.split()[0] for line in body.splitlines()
                      if re.search(r"\.f64\b", line) and not line.split()[0].startswith((".", "ld.", "mov."))]
        assert set(arithmetic) <= {"cvt.rn.f32.f64", "mul.f64", "mul.rn.f64", "div.rn.f64", "sub.f64"}, arithmetic


@CCS
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8], ids=["float32", "float64", "mask"])
def test_dropout_kernel_rounds_as_written(dtype, cc, tmp_path):
    from fastopt.kernels import cuda

    u = np.uint64
    args = [np.zeros(8, dtype), u(0), u(1), u(2), u(3), u(4), u(5), dtype(1)]
    body = check_kernel(cuda.dropout_step.py_func, args, cc, tmp_path)
    assert re.search(r"\bmul\.(hi|wide)\.u32|\bmul\.lo\.s64|\bmul\.hi\.u64", body), "no Philox products"
    assert re.search(r"\bbar\.sync", body) and re.search(r"\.shared\.", body), "words not staged in shared memory"
    if dtype != np.float64:
        assert not re.search(r"\.f64\b", body)


@CCS
@DTYPES
def test_penalty_kernels_round_as_written(dtype, cc, tmp_path):
    """The L2 penalty's tile sums (float64 accumulation of the squares, by design) and the sum
    of the tile sums."""
    from fastopt.kernels import cuda

    table, partial = np.zeros((2, 2)), np.zeros(3)
    tiles = [np.zeros(8, dtype), np.zeros(3, np.uint64), np.zeros(2, np.int64), table, 1, partial]
    body = check_kernel(cuda.tile_penalties.py_func, tiles, cc, tmp_path)
    assert re.search(r"\bmul\.rn\.f64", body) and re.search(r"\bbar\.sync", body)
    check_kernel(cuda.sum_partials.py_func, [partial, np.zeros(1)], cc, tmp_path)


@CCS
def test_bfloat16_penalty_and_fill_kernels_assemble(cc, tmp_path):
    """bfloat16 parameters on the device: the L2 penalty of their uint16 bits squares each
    value widened to float32 (not the integer), and a fill writes the bits."""
    from fastopt.kernels import cuda

    tiles = [np.zeros(8, np.uint16), np.zeros(3, np.uint64), np.zeros(2, np.int64), np.zeros((2, 2)), 1, np.zeros(3)]
    body = check_kernel(cuda.tile_penalties_bfloat16().py_func, tiles, cc, tmp_path)
    assert re.search(r"\bcvt\.f64\.f32", body) and re.search(r"\bmul\.rn\.f64", body), "no float32 value squared"
    assert not re.search(r"\bcvt\.rn\.f64\.[us]16", body), "the bits squared as an integer"
    check_kernel(cuda.fill.py_func, [np.zeros(8, np.uint16), np.uint16(0)], cc, tmp_path)


@CCS
def test_fill_kernel_assembles(cc, tmp_path):
    from fastopt.kernels import cuda

    check_kernel(cuda.fill.py_func, [np.zeros(8, np.float32), np.float32(0)], cc, tmp_path)
