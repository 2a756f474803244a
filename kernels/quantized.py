"""Optimizer state in fewer bytes: block-wise int8 (dynamic quantization) and bfloat16 with
stochastic rounding, around any element-wise rule's unchanged source.

**int8** (Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization", ICLR 2022). Each state row is cut into blocks of :data:`BLOCK` elements, the
tiles of :func:`~.chunks.chunk_table` ``(segments, BLOCK, merge=False)``: a block starts at a
tensor's first element or :data:`BLOCK` elements after the previous one, so no block straddles
a tensor (nor, with it, a parameter group), and the blocks do not depend on the groups or on
which parameters skip a step. A block stores one uint8 code per element and one float32
``absmax``, the largest magnitude in the block; an element's value is ``map[code] * absmax``.

The maps are the paper's dynamic tree type, 256 entries, with a magnitude code ``b`` whose
leading one bit ``h`` says the decade and whose ``h`` bits below it a linear fraction: the
magnitude is ``10**(h + 1 - B) * (1 - 0.9 * (2**(h + 1) - 1 - b) / 2**h)`` for ``B``
magnitude bits (computed as one FMA of float32 constants per decade, so that every target
evaluates it alike and the decade's last value is its power of ten exactly):

* signed (first moments, momentum buffers): bit 7 is the sign, bits 6..0 the magnitude code
  (``B = 7``): zero, then 1 value at ``1e-6``, 2 in ``(1e-6, 1e-5]``, ..., 64 in ``(0.1, 1]``.
  Code 128 is -0.
* unsigned (second moments and other state that is never negative, :data:`NONNEGATIVE`):
  all 8 bits (``B = 8``): zero and 255 values from ``1e-7`` to 1.

Both include 1, so a block's largest element is exact. Quantizing ``y = x * (1 / absmax)``
(float32) finds its decade by comparing ``|y|`` with each decade's lower bound (the midpoint
below its first value) and takes the nearest code in it, ``|y| * gamma + delta`` rounded down
and clamped to the decade: the nearest map value but within about 1/4096 of a step of a
midpoint, where the float32 arithmetic may take the other side (tested against a float64
nearest-value reference). No table is gathered from: LLVM does not vectorise gathers on this
class of CPU, and compares and selects it does. A NaN or an infinity in a block makes its
``absmax`` NaN or inf, and the whole block decodes to NaN (a NaN reaches the state and the
parameters, as a float32 state's element would, but for the block); a block of zeros has
``absmax`` 0, and one whose ``absmax`` is below float32's smallest normal number (1.2e-38)
is stored as zeros.

A step is one fused pass per block: decode the state, run the rule's ``update`` per element in
float32 (the same source as the float32 kernel), keep the new values in a block-sized scratch
array, take each row's ``absmax`` (an integer maximum of the magnitudes' bits, so a NaN wins),
and encode. Nothing else ever holds a float32 copy of the state. Adam's state takes
``2 + 8 / BLOCK`` bytes a parameter.

**bfloat16**: each state value is stored as the upper 16 bits of its float32, rounded
stochastically: ``(bits + r) >> 16`` with 16 random bits ``r``, so that a value rounds up with
probability proportional to its distance from the value below (unbiased). ``r`` for element
``i`` and state row ``k`` comes from Philox4x32-10 with dropout's counter layout: word
``i % 4`` of counter ``(j & 0xffffffff, j >> 32, STATE_STREAM, step)``, ``j = i // 4``, under
the optimizer's seed as key (its low and high 32 bits); row 0 takes the word's low half, row 1
its high half, row 2 the low half of stream ``STATE_STREAM + 1``'s word. The state is a
function of (seed, step, element index) alone, the same on every device and for any number of
threads; a ZeRO shard counts ``i`` from the whole buffer's start. NaN is stored as the quiet
NaN 0x7FC0.

**bfloat16 parameters**: :func:`rounded_kernel` also runs a rule over bfloat16 parameters and
gradients (their uint16 bits): each is widened to float32 (exact), the rule's ``update`` runs in
float32 as over float32 parameters, and the new parameter is written back rounded
stochastically with the low half of element ``i``'s word of stream :data:`PARAM_STREAM`
(counters as above), so a parameter too is a function of (seed, step, element index). No
float32 copy of the parameters is kept. The state is bfloat16 as above, float32, or int8
(:func:`int8_kernel` draws the parameters' words block by block).
"""

import functools

import numpy as np
from numba import njit, prange, uint64

from .chunks import CHUNK_SIZE, TENSOR_TILE
from .cpu import JIT_OPTIONS, TARGET, _source_digest
from .elements import element, rebound
from .philox import MASK32, SHIFT32, philox4x32_10_reference

#: Elements per quantization block: the tiles of the per-tensor rules (one CUDA block each).
BLOCK = TENSOR_TILE
#: float32's smallest normal number: a block whose absmax is below it is stored as zeros.
SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
#: State rows that are never negative by their meaning: quantized with the unsigned map.
NONNEGATIVE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "exp_inf"})
#: The Philox stream of the stochastic rounding of optimizer state (dropout uses layer ids).
STATE_STREAM = 0x53544154  # "STAT"
#: The Philox stream of the stochastic rounding of bfloat16 parameters.
PARAM_STREAM = 0x5041524D  # "PARM"
# -- the maps ---------------------------------------------------------------------------------
#
# Magnitude code ``b`` (1 <= b < 2**bits) lies in decade ``h = floor(log2(b))`` (its ``h``
# fraction bits are ``b - 2**h``), where the value is ``P * (1 + 9 * (b - 2**h + 1) / 2**h)``
# with ``P = 10**(h - bits)``: a line ``beta[h] * b + alpha[h]`` in ``b``, evaluated as one FMA of
# float32 constants, which is what a target computes and what the map holds.


def _decades(bits):
    """float32 ``(alpha, beta)`` of each decade ``h < bits``, padded to 8."""
    alpha, beta = np.zeros(8, np.float32), np.zeros(8, np.float32)
    for h in range(bits):
        top = 10.0 ** (h + 1 - bits)  # the decade's last value: 1 for the last decade
        beta[h] = top * 0.9 / 2**h
        # alpha from the rounded beta, so that the decade's last value is float32(top) (1 exactly)
        alpha[h] = float(np.float32(top)) - float(beta[h]) * (2 ** (h + 1) - 1)
    return alpha, beta


def _line(alpha, beta, b):
    """float32 ``fma(beta, b, alpha)``: exact in float64 (the product has at most 32 bits and
    both terms share a binade or two), then rounded once."""
    return np.float32(np.float64(beta) * np.float64(b) + np.float64(alpha))


@functools.cache
def codec(signed):
    """The map of the signed or unsigned type, and the constants a target computes it with.

    Returns ``(code_map, decode, encode, sign_mask)``: the 256 float32 values by code;
    ``decode = (alpha_0..7, beta_0..7)``; ``encode = (low_0..7, gamma_0..7, delta_0..7)``,
    float32 tuples: a magnitude ``m >= low[h]`` (the midpoint below decade ``h``'s first
    value; inf past the last decade) is in decade ``h`` or above, and its code there is
    ``m * gamma[h] + delta[h]`` (``1 / beta`` and ``0.5 - alpha / beta``), rounded down and
    clamped to the decade; ``sign_mask`` 0x80 (signed) or 0."""
    bits = 7 if signed else 8
    alpha, beta = _decades(bits)
    magnitudes = np.zeros(2**bits, np.float32)
    for b in range(1, 2**bits):
        h = b.bit_length() - 1
        magnitudes[b] = _line(alpha[h], beta[h], b)
    low = np.full(8, np.inf, np.float32)
    gamma, delta = np.zeros(8, np.float32), np.zeros(8, np.float32)
    for h in range(bits):
        below = float(magnitudes[2**h - 1])
        low[h] = (below + float(magnitudes[2**h])) / 2
        gamma[h] = 1.0 / float(beta[h])
        delta[h] = 0.5 - float(alpha[h]) / float(beta[h])
    code_map = np.concatenate([magnitudes, -magnitudes]) if signed else magnitudes
    code_map.setflags(write=False)
    return (code_map, tuple(alpha) + tuple(beta), tuple(low) + tuple(gamma) + tuple(delta),
            0x80 if signed else 0)


def row_codecs(state):
    """:func:`codec` of each state row named in ``state`` (unsigned for :data:`NONNEGATIVE`)."""
    return tuple(codec(name not in NONNEGATIVE) for name in state)


# -- element source, shared by the targets --------------------------------------------------------


@element
def encode(y, constants, sign_mask):
    """The code of ``y`` (a float32 near [-1, 1]) with a row's :func:`codec` encode constants."""
    bits = float_bits(y)  # noqa: F821
    m = bits_float(bits & np.uint32(0x7FFFFFFF))  # noqa: F821
    # Three selects a decade, not four: the decade's last code is 2 * lo - 1; below the first
    # decade (and for NaN) lo = 0.5 makes it 0, the code of zero.
    gamma, delta, lo = np.float32(0.0), np.float32(0.0), np.float32(0.5)
    if m >= constants[0]:
        gamma, delta, lo = constants[8], constants[16], np.float32(1.0)
    if m >= constants[1]:
        gamma, delta, lo = constants[9], constants[17], np.float32(2.0)
    if m >= constants[2]:
        gamma, delta, lo = constants[10], constants[18], np.float32(4.0)
    if m >= constants[3]:
        gamma, delta, lo = constants[11], constants[19], np.float32(8.0)
    if m >= constants[4]:
        gamma, delta, lo = constants[12], constants[20], np.float32(16.0)
    if m >= constants[5]:
        gamma, delta, lo = constants[13], constants[21], np.float32(32.0)
    if m >= constants[6]:
        gamma, delta, lo = constants[14], constants[22], np.float32(64.0)
    if m >= constants[7]:
        gamma, delta, lo = constants[15], constants[23], np.float32(128.0)
    hi = lo + (lo - np.float32(1.0))
    r = mul(m, gamma) + delta  # noqa: F821
    if not r >= lo:  # and NaN
        r = lo
    if r > hi:
        r = hi
    return np.uint8(np.uint32(r) | ((bits >> np.uint32(24)) & np.uint32(sign_mask)))


@element
def decode_value(code, constants, sign_mask):
    """The float32 map value of ``code`` with a row's :func:`codec` decode constants."""
    # The decade by float compares of the code's value (exact): LLVM turns compares of the
    # integer into a switch, which its loop vectoriser does not take (AdamW's int8 step measured
    # 3.5 against 3.0 ns an element on one core).
    b = np.float32(np.uint32(code) & (np.uint32(0xFF) ^ np.uint32(sign_mask)))
    alpha, beta = np.float32(0.0), np.float32(0.0)
    if b >= np.float32(1.0):
        alpha, beta = constants[0], constants[8]
    if b >= np.float32(2.0):
        alpha, beta = constants[1], constants[9]
    if b >= np.float32(4.0):
        alpha, beta = constants[2], constants[10]
    if b >= np.float32(8.0):
        alpha, beta = constants[3], constants[11]
    if b >= np.float32(16.0):
        alpha, beta = constants[4], constants[12]
    if b >= np.float32(32.0):
        alpha, beta = constants[5], constants[13]
    if b >= np.float32(64.0):
        alpha, beta = constants[6], constants[14]
    if b >= np.float32(128.0):
        alpha, beta = constants[7], constants[15]
    value = fma(beta, b, alpha)  # noqa: F821
    if np.uint32(code) & np.uint32(sign_mask):
        return -value
    return value


@element
def inverse(absmax):
    """``1 / absmax`` in float32; 0 where ``absmax`` is NaN or below float32's smallest normal
    number (1.2e-38), whose reciprocal would overflow: such a block encodes as zeros."""
    if absmax >= np.float32(SMALLEST_NORMAL):
        return np.float32(1.0) / absmax
    return np.float32(0.0)


@element
def magnitude_bits(x):
    """The bits of ``|x|``: their integer maximum is the largest magnitude, or a NaN's."""
    return float_bits(x) & np.uint32(0x7FFFFFFF)  # noqa: F821


@element
def bfloat16_value(bits):
    """The float32 of bfloat16 ``bits`` (a uint16)."""
    return bits_float(np.uint32(bits) << np.uint32(16))  # noqa: F821


@element
def round_bfloat16(x, random16):
    """``x`` (float32) to bfloat16 bits, rounded stochastically with 16 random bits."""
    if x != x:
        return np.uint16(0x7FC0)
    return np.uint16((float_bits(x) + np.uint32(random16)) >> np.uint32(16))  # noqa: F821


@element
def _load_bf1(state, i):
    return (bfloat16_value(state[0, i]),)


@element
def _load_bf2(state, i):
    return bfloat16_value(state[0, i]), bfloat16_value(state[1, i])


@element
def _load_bf3(state, i):
    return bfloat16_value(state[0, i]), bfloat16_value(state[1, i]), bfloat16_value(state[2, i])


@element
def _store_bf1(state, i, values, word, word2):
    state[0, i] = round_bfloat16(values[0], word & np.uint32(0xFFFF))


@element
def _store_bf2(state, i, values, word, word2):
    state[0, i] = round_bfloat16(values[0], word & np.uint32(0xFFFF))
    state[1, i] = round_bfloat16(values[1], word >> np.uint32(16))


@element
def _store_bf3(state, i, values, word, word2):
    state[0, i] = round_bfloat16(values[0], word & np.uint32(0xFFFF))
    state[1, i] = round_bfloat16(values[1], word >> np.uint32(16))
    state[2, i] = round_bfloat16(values[2], word2 & np.uint32(0xFFFF))


_LOADS_BF = (None, _load_bf1, _load_bf2, _load_bf3)
_STORES_BF = (None, _store_bf1, _store_bf2, _store_bf3)


@element
def _store_plain(state, i, values, word, word2):
    """Store float state, which takes no random bits (``store`` is the rule's own)."""
    store(state, i, values)  # noqa: F821


@element
def _value_plain(x, i):
    return x[i]


@element
def _value_bfloat16(x, i):
    return bfloat16_value(x[i])


@element
def _put_plain(x, i, value, word):
    x[i] = value


@element
def _put_bfloat16(x, i, value, word):
    x[i] = round_bfloat16(value, word & np.uint32(0xFFFF))


@element
def apply_rounded(param, state, grad, i, chunk, word, word2, pword):
    """One element of a step that rounds stochastically: the parameter and its gradient read
    (``value``: as they are, or widened from bfloat16), the rule's update in the compute dtype,
    the parameter written back (``put``: as it is, or rounded to bfloat16 with the low half of
    ``pword``, its Philox word of :data:`PARAM_STREAM`) and the state stored (``store``: as it
    is, or rounded to bfloat16 with ``word`` of :data:`STATE_STREAM`, rows 0 and 1, and
    ``word2`` of the next stream, row 2)."""
    p, values = update(value(param, i), load(state, i), value(grad, i), chunk)  # noqa: F821
    put(param, i, p, pword)  # noqa: F821
    store(state, i, values, word, word2)  # noqa: F821


@element
def _decode1(codes, scales, i):
    return (decode_value(codes[0, i], DECODE0, SIGN0) * scales[0],)  # noqa: F821


@element
def _decode2(codes, scales, i):
    return (decode_value(codes[0, i], DECODE0, SIGN0) * scales[0],  # noqa: F821
            decode_value(codes[1, i], DECODE1, SIGN1) * scales[1])  # noqa: F821


@element
def _decode3(codes, scales, i):
    return (decode_value(codes[0, i], DECODE0, SIGN0) * scales[0],  # noqa: F821
            decode_value(codes[1, i], DECODE1, SIGN1) * scales[1],  # noqa: F821
            decode_value(codes[2, i], DECODE2, SIGN2) * scales[2])  # noqa: F821


@element
def _keep1(scratch, j, values):
    scratch[0, j] = values[0]


@element
def _keep2(scratch, j, values):
    scratch[0, j], scratch[1, j] = values


@element
def _keep3(scratch, j, values):
    scratch[0, j], scratch[1, j], scratch[2, j] = values


@element
def finish_row(scratch, k, codes, absmax, t, start, n):
    """Row ``k`` of a block: its new ``absmax`` (an integer maximum of the magnitudes' bits, so
    that a NaN wins) and its codes; ``ENCODE`` and ``SIGN`` are bound per row."""
    largest = np.int32(0)  # int32, which magnitudes' bits fit: a uint32 maximum is widened to 64 bits
    for j in range(n):
        largest = max(largest, np.int32(magnitude_bits(scratch[k, j])))
    top = bits_float(largest)  # noqa: F821
    absmax[k, t] = top
    scale = inverse(top)
    for j in range(n):
        codes[k, start + j] = encode(scratch[k, j] * scale, ENCODE, SIGN)  # noqa: F821


@element
def _finish1(scratch, codes, absmax, t, start, n):
    row0(scratch, 0, codes, absmax, t, start, n)  # noqa: F821


@element
def _finish2(scratch, codes, absmax, t, start, n):
    row0(scratch, 0, codes, absmax, t, start, n)  # noqa: F821
    row1(scratch, 1, codes, absmax, t, start, n)  # noqa: F821


@element
def _finish3(scratch, codes, absmax, t, start, n):
    row0(scratch, 0, codes, absmax, t, start, n)  # noqa: F821
    row1(scratch, 1, codes, absmax, t, start, n)  # noqa: F821
    row2(scratch, 2, codes, absmax, t, start, n)  # noqa: F821


_DECODES = (None, _decode1, _decode2, _decode3)
_KEEPS = (None, _keep1, _keep2, _keep3)
_FINISHES = (None, _finish1, _finish2, _finish3)


def int8_bindings(target, rule, bfloat16_params=False):
    """What the int8 step's ``update``, ``decode``, ``keep``, ``value`` and ``put`` mean for
    ``rule`` on ``target`` (each row's map constants bound in as constants) over float32 or
    bfloat16 parameters; the targets finish a block their own way."""
    decode_names = {}
    for k, (_, decode, _, sign) in enumerate(row_codecs(rule.state)):
        decode_names[f"DECODE{k}"], decode_names[f"SIGN{k}"] = decode, sign
    n = len(rule.state)
    value, put = (_value_bfloat16, _put_bfloat16) if bfloat16_params else (_value_plain, _put_plain)
    return {"update": rule.update, "decode": target.element(_DECODES[n], **decode_names), "keep": _KEEPS[n],
            "value": value, "put": put, "PARAM_WORDS": bool(bfloat16_params)}


def rounded_bindings(target, rule, state_kind, bfloat16_params):
    """What :func:`apply_rounded` means for ``rule`` on ``target`` with ``state_kind`` state
    (``"bfloat16"``, or None: the compute dtype's) and bfloat16 parameters or not."""
    n = len(rule.state)
    plain = rule.element_bindings()
    if state_kind == "bfloat16" and n:
        load, store = _LOADS_BF[n], _STORES_BF[n]
    else:
        load, store = plain["load"], target.element(_store_plain, store=plain["store"])
    value, put = (_value_bfloat16, _put_bfloat16) if bfloat16_params else (_value_plain, _put_plain)
    return {"update": rule.update, "load": load, "store": store, "value": value, "put": put}


# -- the CPU kernels ----------------------------------------------------------------------------


def int8_step(param, codes, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset):
    """One step of a rule with int8 state over the blocks (the tiles ``bounds``, ``groups``);
    ``prologue``, ``decode``, ``update``, ``keep``, ``value``, ``put`` and ``finish`` are bound
    per rule. Over bfloat16 parameters (``PARAM_WORDS``) each block draws its parameters'
    Philox words of :data:`PARAM_STREAM` :data:`~.dropout.LANES` counters at a time, counted
    from the whole buffer's start (``offset``: a ZeRO shard's), as :func:`rounded_step` does."""
    rows = codes.shape[0]
    like = np.empty(0, np.float32)
    for t in prange(groups.size):
        if groups[t] >= 0:
            chunk = prologue(like, table[groups[t]], scalars)  # noqa: F821
            start = bounds[t]
            n = bounds[t + 1] - start
            scales = _block_scales(absmax, t, rows)
            # The block's own length, not BLOCK: the on-disk cache would keep a BLOCK frozen at
            # compile time, and a test process that changes it must not overrun another's scratch.
            scratch = np.empty((rows, n), np.float32)
            pwords = _block_words(start + offset, n, PARAM_WORDS, uint64(PARAM_STREAM), step, key0, key1)  # noqa: F821
            for j in range(n):
                i = start + j
                p, values = update(value(param, i), decode(codes, scales, i), value(grad, i), chunk)  # noqa: F821
                put(param, i, p, pwords[j] if PARAM_WORDS else np.uint32(0))  # noqa: F821
                keep(scratch, j, values)  # noqa: F821
            finish(scratch, codes, absmax, t, start, n)  # noqa: F821


def block_words(first, n, wanted, stream, step, key0, key1):
    """The Philox words of ``stream`` of elements ``first .. first + n`` of the whole buffer
    (uint32, element order), made :data:`~.dropout.LANES` counters at a time before a block's
    loop, which then runs as over float32 parameters; none unless ``wanted``."""
    if not wanted:
        return np.empty(0, np.uint32)
    out = np.empty(n, np.uint32)
    c0, c1, c2, c3, words = _lanes()  # noqa: F821
    stop = first + n
    for batch in range(first >> uint64(2), (stop + uint64(3)) >> uint64(2), LANES):  # noqa: F821
        _words(batch, c0, c1, c2, c3, words, stream, step, key0, key1)  # noqa: F821
        base = batch * uint64(4)
        for w in range(max(first, base), min(stop, base + LANES * uint64(4))):  # noqa: F821
            out[w - first] = np.uint32(words[w - base])
    return out


def rounded_step(param, state, grad, bounds, groups, table, scalars, key0, key1, step, offset):
    """One step of a rule that rounds stochastically (bfloat16 state, bfloat16 parameters or
    both) over the chunk table; ``prologue`` and ``apply_rounded`` are bound per rule, and
    ``STATE_WORDS`` and ``PARAM_WORDS`` say which Philox words it draws. Element ``i`` of the
    buffer is element ``offset + i`` of the whole (a ZeRO shard's start), which picks its
    Philox counter. Per chunk, the Philox words of its elements' counters are made
    :data:`~.dropout.LANES` counters at a time (rounds outer, lanes inner: vectorised) into
    element order, as dropout does. The chunk's constants are float32 whatever the parameters'
    storage (``like``: the prologue reads only its dtype)."""
    two_streams = state.shape[0] > 2
    stream = uint64(STATE_STREAM)
    like = np.empty(0, np.float32)
    for c in prange(groups.size):
        if groups[c] >= 0:
            chunk = prologue(like, table[groups[c]], scalars)  # noqa: F821
            c0, c1, c2, c3, words = _lanes()
            words2 = np.zeros_like(words)
            pwords = np.zeros_like(words)
            start, stop = bounds[c] + offset, bounds[c + 1] + offset  # in the whole's elements
            for batch in range(start >> uint64(2), (stop + uint64(3)) >> uint64(2), LANES):
                if STATE_WORDS:  # noqa: F821
                    _words(batch, c0, c1, c2, c3, words, stream, step, key0, key1)
                    if two_streams:
                        _words(batch, c0, c1, c2, c3, words2, stream + uint64(1), step, key0, key1)
                if PARAM_WORDS:  # noqa: F821
                    _words(batch, c0, c1, c2, c3, pwords, uint64(PARAM_STREAM), step, key0, key1)
                base = batch * uint64(4)
                lo = max(start, base)
                hi = min(stop, base + LANES * uint64(4))
                for i in range(lo, hi):
                    apply_rounded(param, state, grad, i - offset, chunk, np.uint32(words[i - base]),  # noqa: F821
                                  np.uint32(words2[i - base]), np.uint32(pwords[i - base]))


def _compile(function, bindings, name, parallel):
    names = TARGET.names(function, bindings)
    return njit(parallel=parallel, **JIT_OPTIONS)(rebound(function, names, f"{name}_{_source_digest()}"))


@functools.cache
def _block_words_kernel():
    """:func:`block_words`, compiled (called from the kernels)."""
    from .dropout import LANES, _lanes, _words

    return njit(**{**JIT_OPTIONS, "cache": False})(rebound(block_words, {"_lanes": _lanes, "_words": _words,
                                                                      "LANES": LANES}))


@functools.cache
def int8_kernel(rule, parallel=True, bfloat16_params=False):
    """The CPU kernel of an element-wise ``rule`` with int8 state over float32 or (its uint16
    bits) bfloat16 parameters (see :func:`int8_step`)."""
    rows = {f"row{k}": TARGET.element(finish_row, ENCODE=encode_constants, SIGN=sign)
            for k, (_, _, encode_constants, sign) in enumerate(row_codecs(rule.state))}
    bindings = {"prologue": rule.prologue, **int8_bindings(TARGET, rule, bfloat16_params),
                "finish": TARGET.element(_FINISHES[len(rule.state)], **rows), "_block_words": _block_words_kernel()}
    name = f"{rule.name}_int8{'_bf16p' if bfloat16_params else ''}{'' if parallel else '_serial'}"
    return _compile(int8_step, bindings, name, parallel)


def bfloat16_kernel(rule, parallel=True):
    """The CPU kernel of an element-wise ``rule`` with bfloat16 state over float32 parameters
    (see :func:`rounded_step`)."""
    return rounded_kernel(rule, "bfloat16", False, parallel)


@functools.cache
def rounded_kernel(rule, state_kind, bfloat16_params, parallel=True):
    """The CPU kernel of an element-wise ``rule`` with ``state_kind`` state (``"bfloat16"`` or
    None: float32) over float32 or (``bfloat16_params``) bfloat16 parameters and gradients,
    passed as their uint16 bits (see :func:`rounded_step`)."""
    from .dropout import LANES, _lanes, _words

    state_words = state_kind == "bfloat16" and len(rule.state) > 0
    apply = TARGET.element(apply_rounded, **rounded_bindings(TARGET, rule, state_kind, bfloat16_params))
    bindings = {"prologue": rule.prologue, "apply_rounded": apply, "_lanes": _lanes, "_words": _words,
                "LANES": LANES, "STATE_WORDS": state_words, "PARAM_WORDS": bool(bfloat16_params)}
    name = f"{rule.name}_{'bf16' if state_words else 'f32'}{'_bf16p' if bfloat16_params else ''}"
    return _compile(rounded_step, bindings, name + ('' if parallel else '_serial'), parallel)


# -- int8 and bfloat16 state of a rule with per-tensor sums (LAMB) ---------------------------------
#
# Both passes decode a tile's stored state and run the rule's ``update`` from it and the
# gradient (the same bits twice): the first sums ``p**2`` and the fresh direction's squares and
# writes nothing; the second steps with the fresh direction and stores the new state encoded.
# So a step is the float32 rule's step from the decoded state, and only the state kept between
# steps is rounded, as for the element-wise rules. (A direction formed from the re-encoded
# state instead would divide by a second moment quantized to zero where a gradient is tiny
# against its block: ``m / eps``, which wrecks the tensor's trust ratio.) The int8 blocks are
# the rule's tiles (both start at each tensor and take TENSOR_TILE elements), so the second
# pass encodes a tile whole.


@element
def _block_scales(absmax, t, rows):
    """int8: block ``t``'s absmax of each row."""
    scales = np.empty(rows, np.float32)
    for k in range(rows):
        scales[k] = absmax[k, t]
    return scales


@element
def _no_scales(absmax, t, rows):
    """bfloat16: no scales."""
    return np.empty(0, np.float32)


@element
def _block_scratch(rows, n):
    """int8: the block's new state, kept for encoding."""
    return np.empty((rows, n), np.float32)


@element
def _no_scratch(rows, n):
    return np.empty((0, 0), np.float32)


@element
def _no_finish(scratch, state, absmax, t, start, n):
    """bfloat16: each element's state was stored as it stepped."""


@element
def int8_direction(param, codes, scales, grad, i, chunk):
    """The direction at element ``i`` from its int8 state (``scales``: its block's absmax)."""
    u, _ = update(param[i], decode(codes, scales, i), grad[i], chunk)  # noqa: F821
    return u


@element
def loaded_direction(param, state, scales, grad, i, chunk):
    """The direction at element ``i`` from its loaded (bfloat16) state; ``scales`` unused."""
    u, _ = update(param[i], load(state, i), grad[i], chunk)  # noqa: F821
    return u


@element
def int8_tensor_step(param, codes, scratch, grad, scales, i, j, chunk, scale, word, word2):
    """The second pass at element ``i`` (``j`` in its block) over int8 state: the direction and
    new state again from the decoded state, the step, and the new state kept for encoding."""
    p = param[i]
    u, values = update(p, decode(codes, scales, i), grad[i], chunk)  # noqa: F821
    param[i] = step(p, u, scale)  # noqa: F821
    keep(scratch, j, values)  # noqa: F821


@element
def rounded_tensor_step(param, state, scratch, grad, scales, i, j, chunk, scale, word, word2):
    """The second pass at element ``i`` over bfloat16 state: the direction and new state again
    from the loaded state, the step, and the new state stored rounded with ``word`` (``word2``:
    the third row's)."""
    p = param[i]
    u, values = update(p, load(state, i), grad[i], chunk)  # noqa: F821
    param[i] = step(p, u, scale)  # noqa: F821
    store(state, i, values, word, word2)  # noqa: F821


def encoded_tensorwise_step(param, state, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset,
                            tile_tensor, tensor_tiles, partial, sums):
    """One step of a rule with per-tensor sums over int8 or bfloat16 state (``state``: the
    codes or the bits; ``absmax``: int8's, else unused), in the three stages of
    :mod:`.tensorwise`: per tile, the sums of ``p**2`` and the direction's squares lane by lane
    as there; per tensor, the tiles' sums; per tile, the step, the new state stored (bfloat16:
    rounded with each element's Philox words of :data:`STATE_STREAM`, ``WORDS``, drawn before
    the tile's loop as :func:`rounded_step` counts them) or kept and the block encoded (int8).
    ``prologue``, ``scales_of``, ``direction_at``, ``scratch_for``, ``step_at``, ``finish``,
    ``ratio`` and ``scale`` are bound per rule and encoding."""
    rows = state.shape[0]
    width = uint64(LANES)  # noqa: F821
    like = np.empty(0, np.float32)
    for t in prange(groups.size):
        if groups[t] >= 0:
            chunk = prologue(like, table[groups[t]], scalars)  # noqa: F821
            start, stop = bounds[t], bounds[t + 1]
            scales = scales_of(absmax, t, rows)  # noqa: F821
            param_lanes, direction_lanes = np.zeros(LANES), np.zeros(LANES)  # noqa: F821
            directions = np.empty(LANES, np.float32)  # noqa: F821
            for base in range(start, stop, width):
                m = min(width, stop - base)
                for j in range(m):
                    directions[j] = direction_at(param, state, scales, grad, base + j, chunk)  # noqa: F821
                for j in range(m):
                    param_lanes[j] += square(param[base + j])  # noqa: F821
                    direction_lanes[j] += square(directions[j])  # noqa: F821
            partial[t, 0] = tile_sum(param_lanes)  # noqa: F821
            partial[t, 1] = tile_sum(direction_lanes)  # noqa: F821
    for k in range(tensor_tiles.size - 1):
        add_tiles(k, groups, tensor_tiles, partial, sums)  # noqa: F821
    third = WORDS and rows > 2  # noqa: F821
    for t in prange(groups.size):
        if groups[t] >= 0:
            chunk = prologue(like, table[groups[t]], scalars)  # noqa: F821
            start = bounds[t]
            n = bounds[t + 1] - start
            tensor = tile_tensor[t]
            step_size = scale(like, table[groups[t]], scalars, ratio(sums[tensor, 0], sums[tensor, 1]))  # noqa: F821
            scales = scales_of(absmax, t, rows)  # noqa: F821
            scratch = scratch_for(rows, n)  # noqa: F821
            words = _block_words(start + offset, n, WORDS, uint64(STATE_STREAM), step, key0, key1)  # noqa: F821
            words2 = _block_words(start + offset, n, third, uint64(STATE_STREAM + 1), step, key0, key1)  # noqa: F821
            for j in range(n):
                step_at(param, state, scratch, grad, scales, start + j, j, chunk, step_size,  # noqa: F821
                        words[j] if WORDS else np.uint32(0), words2[j] if third else np.uint32(0))  # noqa: F821
            finish(scratch, state, absmax, t, start, n)  # noqa: F821


def encoded_tensorwise_bindings(target, rule, kind):
    """What :func:`encoded_tensorwise_step`'s element functions (and the CUDA passes') mean for
    ``rule`` on ``target`` over ``kind`` (``"int8"`` or ``"bfloat16"``) state."""
    step = rule.tensorwise.step
    if kind == "int8":
        bindings = int8_bindings(target, rule)
        decode, keep = bindings["decode"], bindings["keep"]
        direction = target.element(int8_direction, update=rule.update, decode=decode)
        step_at = target.element(int8_tensor_step, update=rule.update, decode=decode, keep=keep, step=step)
    else:
        load, store = _LOADS_BF[len(rule.state)], _STORES_BF[len(rule.state)]
        direction = target.element(loaded_direction, update=rule.update, load=load)
        step_at = target.element(rounded_tensor_step, update=rule.update, load=load, store=store, step=step)
    return {"prologue": rule.prologue, "direction_at": direction, "step_at": step_at, "ratio": rule.tensorwise.ratio,
            "scale": rule.tensorwise.scale, "WORDS": kind == "bfloat16"}


@functools.cache
def encoded_tensorwise_kernel(rule, kind, parallel=True):
    """The CPU kernel of a rule with per-tensor sums (:attr:`~.rule.Rule.tensorwise`) over
    ``kind`` (``"int8"`` or ``"bfloat16"``) state (see :func:`encoded_tensorwise_step`)."""
    from .penalty import square
    from .tensorwise import LANES, add_tiles, tile_sum

    if kind == "int8":
        rows = {f"row{k}": TARGET.element(finish_row, ENCODE=encode_constants, SIGN=sign)
                for k, (_, _, encode_constants, sign) in enumerate(row_codecs(rule.state))}
        blocks = {"scales_of": _block_scales, "scratch_for": _block_scratch,
                  "finish": TARGET.element(_FINISHES[len(rule.state)], **rows)}
    else:
        blocks = {"scales_of": _no_scales, "scratch_for": _no_scratch, "finish": _no_finish}
    bindings = {**encoded_tensorwise_bindings(TARGET, rule, kind), **blocks, "square": square, "tile_sum": tile_sum,
                "add_tiles": add_tiles, "LANES": LANES, "_block_words": _block_words_kernel()}
    name = f"{rule.name}_{'int8' if kind == 'int8' else 'bf16'}{'' if parallel else '_serial'}"
    return _compile(encoded_tensorwise_step, bindings, name, parallel)


class EncodedTensorwiseLaunch:
    """A CPU step of a per-tensor rule over ``kind`` state and fixed buffers: the kernel build
    for their size and the scratch sums, allocated once; called as ``launch(param, state,
    absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset)``."""

    def __init__(self, rule, kind, size, tensors):
        self._kernel = encoded_tensorwise_kernel(rule, kind, size > CHUNK_SIZE)
        self._tile_tensor, self._tensor_tiles = tensors[:2]
        self.partial = np.zeros((self._tile_tensor.size, 2))
        self.sums = np.zeros((self._tensor_tiles.size - 1, 2))

    def __call__(self, param, state, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset):
        self._kernel(param, state, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset,
                     self._tile_tensor, self._tensor_tiles, self.partial, self.sums)


# -- host helpers and references -------------------------------------------------------------------


def block_table(segments):
    """The blocks of ``(start, stop, group)`` segments: ``(bounds, groups)`` of
    :func:`~.chunks.chunk_table` ``(segments, BLOCK, merge=False)``."""
    from .chunks import chunk_table

    return chunk_table(segments, BLOCK, merge=False)


def encode_reference(values, bounds, state):
    """NumPy reference of the encoder: float32 ``values`` (rows, n) of state rows ``state`` ->
    ``(codes uint8 (rows, n), absmax float32 (rows, blocks))``, in the kernels' arithmetic."""
    values = np.asarray(values, np.float32)
    rows, blocks = values.shape[0], bounds.size - 1
    codes = np.zeros(values.shape, np.uint8)
    absmax = np.zeros((rows, blocks), np.float32)
    counts = np.diff(bounds.astype(np.int64))
    for k, (_, _, constants, sign) in enumerate(row_codecs(state)):
        row = values[k]
        magnitudes = np.abs(row)
        tops = np.zeros(blocks, np.float32)
        nonempty = counts > 0
        starts = bounds[:-1].astype(np.int64)[nonempty]
        tops[nonempty] = np.maximum.reduceat(magnitudes, starts) if row.size else []
        has_nan = np.zeros(blocks, bool)
        has_nan[nonempty] = np.maximum.reduceat(np.isnan(row), starts) if row.size else []
        tops[has_nan] = np.nan
        absmax[k] = tops
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            scale = np.where(tops >= SMALLEST_NORMAL, np.float32(1.0) / tops, np.float32(0.0)).astype(np.float32)
            y = row * np.repeat(scale, counts)  # inf * 0: NaN, in a block that decodes to NaN anyway
        codes[k] = encode_values(y, constants, sign)
    return codes, absmax


def encode_values(y, constants, sign):
    """NumPy of :func:`encode` over float32 ``y``."""
    y = np.asarray(y, np.float32)
    m = np.abs(y)
    gamma, delta, lo, hi = (np.zeros(y.shape, np.float32) for _ in range(4))
    for h in range(8):
        inside = m >= constants[h]
        gamma[inside], delta[inside] = constants[8 + h], constants[16 + h]
        lo[inside], hi[inside] = 2**h, 2 ** (h + 1) - 1
    with np.errstate(invalid="ignore"):
        r = (m * gamma).astype(np.float32) + delta
        r = np.where(r >= lo, r, lo)
        r = np.where(r > hi, hi, r)
    code = r.astype(np.uint32)
    if sign:
        code |= np.signbit(y).astype(np.uint32) << np.uint32(7)
    return code.astype(np.uint8)


def decode_int8(codes, absmax, bounds, state):
    """float32 values (rows, n) of int8 state: ``map[code] * absmax`` per block."""
    values = np.zeros(codes.shape, np.float32)
    counts = np.diff(bounds.astype(np.int64))
    for k, (code_map, _, _, _) in enumerate(row_codecs(state)):
        with np.errstate(invalid="ignore"):  # 0 * inf: a block with an infinity decodes to NaN
            values[k] = code_map[codes[k]] * np.repeat(absmax[k], counts)
    return values


def decode_bfloat16(bits):
    """float32 values of bfloat16 ``bits`` (uint16, any shape)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def random_words(size, key0, key1, step, offset=0, stream=STATE_STREAM):
    """Philox word ``i % 4`` of counter ``i // 4`` for elements ``i`` from ``offset`` on, uint32
    (NumPy, from the Philox reference): row 0's random bits are its low half, row 1's its high
    half; row 2 takes the low half of stream ``STATE_STREAM + 1``'s word."""
    index = np.uint64(offset) + np.arange(size, dtype=np.uint64)
    counter = index >> np.uint64(2)
    counters = np.stack([counter & MASK32, counter >> SHIFT32, np.full(size, stream, np.uint64),
                         np.full(size, step, np.uint64)], axis=-1)
    words = philox4x32_10_reference(counters, np.array([key0, key1], dtype=np.uint64))
    return words[np.arange(size), (index & np.uint64(3)).astype(np.intp)].astype(np.uint32)


def random_halves(size, key0, key1, step, rows, offset=0):
    """The 16 random bits of each of ``rows`` state rows for elements ``offset ..``: (rows, size)."""
    words = random_words(size, key0, key1, step, offset)
    halves = [words & np.uint32(0xFFFF), words >> np.uint32(16)]
    if rows > 2:
        halves.append(random_words(size, key0, key1, step, offset, STATE_STREAM + 1) & np.uint32(0xFFFF))
    return np.stack(halves[:rows]) if rows else np.zeros((0, size), np.uint32)


def random_param_halves(size, key0, key1, step, offset=0):
    """The 16 random bits that round bfloat16 parameters ``offset ..`` (uint32, (size,)): the
    low half of each element's word of :data:`PARAM_STREAM`."""
    return random_words(size, key0, key1, step, offset, PARAM_STREAM) & np.uint32(0xFFFF)


def round_bfloat16_reference(values, random):
    """NumPy reference of the stochastic rounding: float32 ``values`` and 16-bit ``random``
    (same shape) -> bfloat16 bits (uint16)."""
    values = np.asarray(values, np.float32)
    bits = (values.view(np.uint32).astype(np.uint64) + random.astype(np.uint64)) >> np.uint64(16)
    bits = bits.astype(np.uint16)
    bits[np.isnan(values)] = 0x7FC0
    return bits


def round_bfloat16_nearest(values):
    """float32 ``values`` to bfloat16 bits, rounded to nearest even (a float state dict loaded
    into bfloat16 state: no randomness where nothing steps)."""
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)).astype(np.uint16)
    rounded[np.isnan(values)] = 0x7FC0
    return rounded


def kernel_for_size(kind, rule, size, bfloat16_params=False):
    """The CPU kernel of ``rule`` with ``kind`` state (``"int8"``, ``"bfloat16"`` or None:
    float32) over float32 or bfloat16 parameters, built for ``size`` elements."""
    if kind == "int8":
        return int8_kernel(rule, size > CHUNK_SIZE, bool(bfloat16_params))
    return rounded_kernel(rule, kind, bool(bfloat16_params), size > CHUNK_SIZE)


__all__ = ["BLOCK", "NONNEGATIVE", "PARAM_STREAM", "STATE_STREAM", "block_table", "bfloat16_kernel", "codec",
           "decode_bfloat16", "decode_int8", "encode_reference", "encode_values", "int8_kernel", "random_halves",
           "random_param_halves", "round_bfloat16_nearest", "round_bfloat16_reference", "rounded_kernel",
           "row_codecs"]
