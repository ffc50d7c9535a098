"""Triton kernels of the block-sparse flash attention (``triton`` backend).

Only ``@triton.jit`` code lives here; launching, tile choice and autograd are in ``triton.py``.

Conventions shared by every kernel:
- One program per (tile, batch*head), flattened into a 1-D grid ``pid = bh * n_tiles + tile`` so
  that neighbouring tiles of one head run together and share their key/value tiles in L2.
- ``q, k, v, o`` and their gradients are addressed through (batch, head, token, dim) strides, so
  any strided view works; the head dim ``D`` is padded inside the kernel to ``BLOCK_D`` (a power
  of two) with masked loads.
- A block plan lists, per row tile, the column tiles to visit: first the *full* ones (every pair
  attended, no mask), then the *partial* ones, whose element mask is computed here from the
  pattern's interval codes: key ``j`` is attended by query ``i`` iff, on every axis ``a < A``,
  ``qlo[a, i] <= kcode[a, j] <= qhi[a, i]`` (tested as ``kcode - qlo <= qhi - qlo``, unsigned).
  The first two axes' codes, where they fit 15 bits, come packed (``PACKED``): both intervals
  are tested at once on one int32 per token (``_in_box``), which trims the integer work that
  bounds the partial tiles of neighbourhoods. No dense mask is ever materialized.
- Optional relative position bias (``BIAS_AXES > 0``): ``table[h, idx(i, j)]`` is added to the
  natural-log score, where ``idx`` combines per-axis offsets
  ``qcoord[a, i] - kcoord[a, j]`` clamped to ``[-r_a, r_a]`` (row-major over a table of
  ``2 r_a + 1`` per axis). The coordinate table holds the ``BIAS_AXES`` query rows, then the key
  rows (the launcher may pack all grid axes into one row when no offset needs clamping). The
  gradient is the sum of ``dS`` over the pairs sharing an entry, added with atomics by the dK/dV
  pass (the only pass that visits every attended pair once).
- With ``BIAS_TILES`` the launcher has expanded the bias instead, per head, into one
  ``[rows, cols]`` block per visited tile of the pass's plan (``BIAS`` ``[heads, row tiles *
  slots, rows, cols]``; visit ``t`` of row tile ``r`` is block ``r * slots + t``, full tiles
  first): a tile reads its bias as coalesced as a key tile, instead of one scattered table
  read per pair. The dK/dV pass then adds ``dS`` into blocks of the same shape (``DBIAS``),
  which the launcher folds back into the table.
- Per-token tables (mask codes, bias coordinates) are int32 ``[rows, N]`` with row stride
  ``stride_c``.
- Softmax runs in base 2: scores are multiplied by ``scale * log2(e)`` and exponentiated with
  ``exp2``. The saved log-sum-exp ``lse`` is in natural-log units (fp32 ``[B*H, N]``).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
GUARDS = tl.constexpr(-2147450880)  # 0x80008000: guard bits of a packed pair of codes
PACKED_EMPTY = tl.constexpr(0x7FFF7FFF)  # packed lo of no query: both fields above any key


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_2d(ptrs, row_ok, col_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """Load a [rows, cols] tile; out-of-range rows/cols read as 0 (masks only where needed)."""
    if EVEN_ROWS:
        if EVEN_COLS:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    else:
        if EVEN_COLS:
            x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    return x


@triton.jit
def _load_tile(X, b, h, row0, offs, stride_n, stride_d, row_ok, d_ok, ROWS: tl.constexpr,
               BLOCK_D: tl.constexpr, EVEN_ROWS: tl.constexpr, EVEN_D: tl.constexpr,
               TMA: tl.constexpr):
    """Rows ``offs = row0 + arange(ROWS)`` of one (batch, head) of an input: through ``X``, a
    4-D tensor descriptor read at ``[b, h, row0, 0]`` (the copy engine fills rows and columns
    past the end with 0), or a pointer already at (b, h)."""
    if TMA:
        x = X.load([b.to(tl.int32), h.to(tl.int32), row0, 0]).reshape(ROWS, BLOCK_D)
    else:
        x = _load_2d(X + offs[:, None] * stride_n + tl.arange(0, BLOCK_D)[None, :] * stride_d,
                     row_ok, d_ok, EVEN_ROWS, EVEN_D)
    return x


@triton.jit
def _program(n_tiles, H):
    """This program's tile and (batch*head, batch, head), from ``pid = bh * n_tiles + tile``."""
    pid = tl.program_id(0)
    bh = pid // n_tiles
    return pid % n_tiles, bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _at_head(X, b, h, stride_b, stride_h, TMA: tl.constexpr):
    """Input ``X`` at (batch ``b``, head ``h``): a pointer moved there, or a descriptor as it is
    (``_load_tile`` reads it at ``[b, h, row, 0]``)."""
    if not TMA:
        X += b * stride_b + h * stride_h
    return X


@triton.jit
def _store_2d(ptrs, x, row_ok, col_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    if EVEN_ROWS:
        if EVEN_COLS:
            tl.store(ptrs, x)
        else:
            tl.store(ptrs, x, mask=col_ok[None, :])
    else:
        if EVEN_COLS:
            tl.store(ptrs, x, mask=row_ok[:, None])
        else:
            tl.store(ptrs, x, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _load_query_codes(QLO, QHI, stride_c, offs, ok, A: tl.constexpr, PACKED: tl.constexpr):
    """Per-axis query intervals of the tokens ``offs`` as (``lo``, unsigned ``span = hi - lo``);
    out of range: span 0 at ``lo = -2**31``, which no code equals (the interval is empty).
    ``PACKED``: axes 0 and 1 as one ``lo`` and one guarded ``hi`` code (see ``_in_box``) in
    ``lo0``, ``span0`` (out of range: ``lo`` fields of ``2**15 - 1``, above every key's); axis 2,
    if any, in the next row."""
    if PACKED:
        lo0 = tl.load(QLO + offs, mask=ok, other=PACKED_EMPTY)
        span0 = tl.load(QHI + offs, mask=ok, other=0)
    else:
        lo0, span0 = _interval(QLO, QHI, offs, ok)
    lo1 = lo0
    span1 = span0
    lo2 = lo0
    span2 = span0
    if A > 1 and not PACKED:
        lo1, span1 = _interval(QLO + stride_c, QHI + stride_c, offs, ok)
    if A > 2:
        if PACKED:  # axis 2 follows the packed pair
            lo2, span2 = _interval(QLO + stride_c, QHI + stride_c, offs, ok)
        else:
            lo2, span2 = _interval(QLO + 2 * stride_c, QHI + 2 * stride_c, offs, ok)
    return lo0, span0, lo1, span1, lo2, span2


@triton.jit
def _interval(LO, HI, offs, ok):
    lo = tl.load(LO + offs, mask=ok, other=-2147483648)
    hi = tl.load(HI + offs, mask=ok, other=-2147483648)
    return lo, (hi - lo).to(tl.uint32, bitcast=True)


@triton.jit
def _load_rows(T, stride_c, offs, ok, ROWS: tl.constexpr):
    """The first ``ROWS`` (0..3) rows of a per-token table at tokens ``offs`` (key codes, bias
    coordinates); out of range, and rows past ``ROWS``: 0 (key codes there fail the bounds
    mask)."""
    c0 = offs * 0
    if ROWS > 0:
        c0 = tl.load(T + offs, mask=ok, other=0)
    c1 = c0
    c2 = c0
    if ROWS > 1:
        c1 = tl.load(T + stride_c + offs, mask=ok, other=0)
    if ROWS > 2:
        c2 = tl.load(T + 2 * stride_c + offs, mask=ok, other=0)
    return c0, c1, c2


@triton.jit
def _in_interval(lo, span, c, KEYS_ON_ROWS: tl.constexpr):
    """``lo <= c <= lo + span`` as one unsigned comparison: below ``lo``, ``c - lo`` wraps to a
    huge value (half the integer work of two signed bounds)."""
    if KEYS_ON_ROWS:  # [keys, queries]
        ok = (c[:, None] - lo[None, :]).to(tl.uint32, bitcast=True) <= span[None, :]
    else:  # [queries, keys]
        ok = (c[None, :] - lo[:, None]).to(tl.uint32, bitcast=True) <= span[:, None]
    return ok


@triton.jit
def _in_box(lo, hi, kg, k, KEYS_ON_ROWS: tl.constexpr):
    """Both axes of a packed pair at once (SIMD within a register): every code holds two 15-bit
    fields, at bits 0 and 16, and ``GUARDS`` the bits above them. Per field, ``kg - lo``
    (``kg = k | GUARDS``) keeps its guard bit iff ``k >= lo``, and ``hi - k`` (``hi`` guarded)
    iff ``k <= hi``; no borrow crosses a field. One AND and one compare for the two intervals,
    where the unpacked test takes two compares and their AND."""
    if KEYS_ON_ROWS:  # [keys, queries]
        t = (kg[:, None] - lo[None, :]) & (hi[None, :] - k[:, None])
    else:  # [queries, keys]
        t = (kg[None, :] - lo[:, None]) & (hi[:, None] - k[None, :])
    return (t & GUARDS) == GUARDS


@triton.jit
def _pair_mask(lo0, span0, lo1, span1, lo2, span2, c0, c1, c2, key_ok, A: tl.constexpr,
               PACKED: tl.constexpr, KEYS_ON_ROWS: tl.constexpr, EVEN_N: tl.constexpr):
    """Element mask of a tile: the interval test on every axis, plus the key bounds where the
    last key tile is short. ``PACKED``: axes 0 and 1 share one code (key rows ``k | GUARDS``
    and ``k``, see ``_in_box``; axis 2, if any, in key row 2)."""
    if PACKED:
        ok = _in_box(lo0, span0, c0, c1, KEYS_ON_ROWS)
    else:
        ok = _in_interval(lo0, span0, c0, KEYS_ON_ROWS)
        if A > 1:
            ok = ok & _in_interval(lo1, span1, c1, KEYS_ON_ROWS)
    if A > 2:
        ok = ok & _in_interval(lo2, span2, c2, KEYS_ON_ROWS)
    if not EVEN_N:
        if KEYS_ON_ROWS:
            ok = ok & key_ok[:, None]
        else:
            ok = ok & key_ok[None, :]
    return ok


@triton.jit
def _axis_offset(qc, kc, r, KEYS_ON_ROWS: tl.constexpr):
    """Clamped offset ``coord[i] - coord[j]`` on one axis, shifted to a table index 0..2r."""
    if KEYS_ON_ROWS:
        d = qc[None, :] - kc[:, None]
    else:
        d = qc[:, None] - kc[None, :]
    return tl.minimum(tl.maximum(d, -r), r) + r


@triton.jit
def _add_bias(s, BIAS, idx, ok, MASKED: tl.constexpr):
    """``s + table[idx] * log2(e)``; on masked tiles only the attended pairs read the table
    (fewer cache lines: masked pairs' indices scatter over the whole table)."""
    if MASKED:
        b = tl.load(BIAS + idx, mask=ok, other=0.0)
    else:
        b = tl.load(BIAS + idx)
    return s + b * LOG2E


@triton.jit
def _bias_block(BIAS, slot, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Expanded bias block number ``slot`` (``[ROWS, COLS]``, fp32)."""
    offs = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    return tl.load(BIAS + slot.to(tl.int64) * (ROWS * COLS) + offs).to(tl.float32)


@triton.jit
def _bias_index(qc0, qc1, qc2, kc0, kc1, kc2, r0, r1, r2, w1, w2, BIAS_AXES: tl.constexpr,
                KEYS_ON_ROWS: tl.constexpr):
    """Flat index into one head's bias table for every pair of a tile (``w_a = 2 r_a + 1``)."""
    idx = _axis_offset(qc0, kc0, r0, KEYS_ON_ROWS)
    if BIAS_AXES > 1:
        idx = idx * w1 + _axis_offset(qc1, kc1, r1, KEYS_ON_ROWS)
    if BIAS_AXES > 2:
        idx = idx * w2 + _axis_offset(qc2, kc2, r2, KEYS_ON_ROWS)
    return idx


@triton.jit
def _plan_row(FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, stride_plan, row, bias_slots,
              PARTIAL: tl.constexpr):
    """Visits of plan row ``row``, its full tiles or (``PARTIAL``) its partial ones: pointer to
    their tile indices, their count, and the bias slot of the first (full tiles come first)."""
    n_full = tl.load(FULL_CNT + row)
    if PARTIAL:
        idx = PART_IDX + row * stride_plan
        count = tl.load(PART_CNT + row)
        slot0 = row * bias_slots + n_full
    else:
        idx = FULL_IDX + row * stride_plan
        count = n_full
        slot0 = row * bias_slots
    return idx, count, slot0


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tile_scores(q, K, V, KC, b, h, kv_tile, slot,
                 lo0, span0, lo1, span1, lo2, span2,
                 BIAS, BC, qb0, qb1, qb2, r0, r1, r2, w1, w2,
                 stride_kn, stride_kd, stride_vn, stride_vd, stride_c, N, D, qk_scale,
                 offs_n0, offs_d,
                 MASKED: tl.constexpr, A: tl.constexpr, PACKED: tl.constexpr,
                 BIAS_AXES: tl.constexpr,
                 BIAS_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
                 DOT_PREC: tl.constexpr, TMA: tl.constexpr):
    """Key tile ``kv_tile`` (the plan's visit ``slot``) of a query tile ``q``: its keys and
    values, the scores ``[queries, keys]`` in log2 units with the bias added, and the element
    mask ``ok`` (the key bounds on full tiles)."""
    offs_n = kv_tile * BLOCK_N + offs_n0
    n_ok = offs_n < N
    d_ok = offs_d < D
    k = _load_tile(K, b, h, kv_tile * BLOCK_N, offs_n, stride_kn, stride_kd, n_ok, d_ok,
                   BLOCK_N, BLOCK_D, EVEN_N, EVEN_D, TMA)
    v = _load_tile(V, b, h, kv_tile * BLOCK_N, offs_n, stride_vn, stride_vd, n_ok, d_ok,
                   BLOCK_N, BLOCK_D, EVEN_N, EVEN_D, TMA)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    ok = n_ok[None, :]
    if MASKED:
        c0, c1, c2 = _load_rows(KC, stride_c, offs_n, n_ok, A)
        ok = _pair_mask(lo0, span0, lo1, span1, lo2, span2, c0, c1, c2, n_ok, A, PACKED,
                        False, EVEN_N)
    if BIAS_TILES:
        s += _bias_block(BIAS, slot, BLOCK_M, BLOCK_N) * LOG2E
    elif BIAS_AXES > 0:
        kb0, kb1, kb2 = _load_rows(BC + BIAS_AXES * stride_c, stride_c, offs_n, n_ok, BIAS_AXES)
        idx = _bias_index(qb0, qb1, qb2, kb0, kb1, kb2, r0, r1, r2, w1, w2, BIAS_AXES, False)
        s = _add_bias(s, BIAS, idx, ok, MASKED)
    return k, v, s, ok


@triton.jit
def _softmax_step(acc, l_i, m_i, v, s, ok, MASKED: tl.constexpr, EVEN_N: tl.constexpr,
                  DOT_PREC: tl.constexpr):
    """One step of the online softmax over a key tile (``_tile_scores``' values, scores and
    element mask)."""
    if MASKED or not EVEN_N:
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        # A row with nothing attended so far keeps m = -inf: shift by 0 instead (no inf - inf).
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new  # full tiles come first and attend every in-range key: m_new is finite
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, QLO, QHI, KC,
                FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, stride_plan,
                BIAS, BC, stride_bias, bias_slots, r0, r1, r2, w1, w2,
                stride_qb, stride_qh, stride_qn, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_ob, stride_oh, stride_on, stride_od,
                stride_c, H, N, D, n_tiles, qk_scale,
                A: tl.constexpr, PACKED: tl.constexpr, BIAS_AXES: tl.constexpr,
                BIAS_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                EVEN_D: tl.constexpr, DOT_PREC: tl.constexpr, TMA: tl.constexpr):
    q_tile, bh, b, h = _program(n_tiles, H)
    Q = _at_head(Q, b, h, stride_qb, stride_qh, TMA)
    K = _at_head(K, b, h, stride_kb, stride_kh, TMA)
    V = _at_head(V, b, h, stride_vb, stride_vh, TMA)
    O += b * stride_ob + h * stride_oh
    BIAS += h * stride_bias

    offs_m = q_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    d_ok = offs_d < D
    q = _load_tile(Q, b, h, q_tile * BLOCK_M, offs_m, stride_qn, stride_qd, m_ok, d_ok,
                   BLOCK_M, BLOCK_D, EVEN_M, EVEN_D, TMA)
    lo0, span0, lo1, span1, lo2, span2 = _load_query_codes(QLO, QHI, stride_c, offs_m, m_ok,
                                                           A, PACKED)
    qb0, qb1, qb2 = _load_rows(BC, stride_c, offs_m, m_ok, BIAS_AXES)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for partial in tl.static_range(2):  # full tiles (no mask), then partial ones
        IDX, count, slot0 = _plan_row(FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, stride_plan,
                                      q_tile, bias_slots, partial)
        for t in range(0, count):
            kv_tile = tl.load(IDX + t)
            _, v, s, ok = _tile_scores(q, K, V, KC, b, h, kv_tile, slot0 + t,
                                       lo0, span0, lo1, span1, lo2, span2,
                                       BIAS, BC, qb0, qb1, qb2, r0, r1, r2, w1, w2,
                                       stride_kn, stride_kd, stride_vn, stride_vd, stride_c,
                                       N, D, qk_scale, offs_n0, offs_d,
                                       partial, A, PACKED, BIAS_AXES, BIAS_TILES, BLOCK_M,
                                       BLOCK_N, BLOCK_D, EVEN_N, EVEN_D, DOT_PREC, TMA)
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, v, s, ok, partial, EVEN_N, DOT_PREC)

    # Rows inside the sequence always attend at least themselves; padded rows are not stored.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    _store_2d(O + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
              o.to(O.dtype.element_ty), m_ok, d_ok, EVEN_M, EVEN_D)
    lse = (m_i + tl.math.log2(l_safe)) * LN2
    tl.store(LSE + bh.to(tl.int64) * N + offs_m, lse, mask=m_ok)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, O, DQ, LSE, DELTA, QLO, QHI, b, h, q_tile, slot,
               c0, c1, c2,
               BIAS, DBIAS, BC, kb0, kb1, kb2, r0, r1, r2, w1, w2,
               stride_qn, stride_qd, stride_don, stride_dod, stride_on, stride_od,
               stride_dqn, stride_dqd, stride_c, N, D, qk_scale, sm_scale,
               offs_m0, offs_d, n_ok,
               MASKED: tl.constexpr, A: tl.constexpr, PACKED: tl.constexpr,
               BIAS_AXES: tl.constexpr,
               BIAS_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
               EVEN_D: tl.constexpr, DOT_PREC: tl.constexpr, FUSED_DQ: tl.constexpr,
               TMA: tl.constexpr):
    """Add query tile ``q_tile`` (the plan's visit ``slot``) to dK, dV of one key tile (scores
    held transposed).

    With ``FUSED_DQ`` this key tile is the only one the query tile attends (a one-to-one plan):
    the row term ``delta`` is computed here from O and dO, and dQ of the query tile is complete
    and stored, so no separate dQ pass runs.
    """
    offs_m = q_tile * BLOCK_M + offs_m0
    m_ok = offs_m < N
    d_ok = offs_d < D
    q = _load_tile(Q, b, h, q_tile * BLOCK_M, offs_m, stride_qn, stride_qd, m_ok, d_ok,
                   BLOCK_M, BLOCK_D, EVEN_M, EVEN_D, TMA)
    do = _load_tile(DO, b, h, q_tile * BLOCK_M, offs_m, stride_don, stride_dod, m_ok, d_ok,
                    BLOCK_M, BLOCK_D, EVEN_M, EVEN_D, TMA)
    # Out-of-range query rows: lse = +inf makes their probabilities exactly 0.
    lse = tl.load(LSE + offs_m, mask=m_ok, other=float("inf")) * LOG2E
    if FUSED_DQ:
        o = _load_tile(O, b, h, q_tile * BLOCK_M, offs_m, stride_on, stride_od, m_ok, d_ok,
                       BLOCK_M, BLOCK_D, EVEN_M, EVEN_D, TMA)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    else:
        delta = tl.load(DELTA + offs_m, mask=m_ok, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # [BLOCK_N, BLOCK_M]
    if MASKED:
        lo0, span0, lo1, span1, lo2, span2 = _load_query_codes(QLO, QHI, stride_c, offs_m,
                                                               m_ok, A, PACKED)
        ok = _pair_mask(lo0, span0, lo1, span1, lo2, span2, c0, c1, c2, n_ok, A, PACKED,
                        True, EVEN_N)
    else:
        ok = n_ok[:, None] & m_ok[None, :]
    if BIAS_TILES:
        s_t += _bias_block(BIAS, slot, BLOCK_N, BLOCK_M) * LOG2E
    elif BIAS_AXES > 0:
        qb0, qb1, qb2 = _load_rows(BC, stride_c, offs_m, m_ok, BIAS_AXES)
        idx_t = _bias_index(qb0, qb1, qb2, kb0, kb1, kb2, r0, r1, r2, w1, w2, BIAS_AXES, True)
        s_t = _add_bias(s_t, BIAS, idx_t, ok, MASKED)
    p_t = tl.math.exp2(s_t - lse[None, :])
    # Padded key rows (k = 0) must get p = 0, not exp2(bias - lse): that is infinite when every
    # score of a row is far below zero, and inf * 0 in dQ = dS^T K is NaN.
    if MASKED or not EVEN_N:
        p_t = tl.where(ok, p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    ds_t = p_t * (dp_t - delta[None, :])
    # dS of the natural-log score is the bias gradient of each pair.
    if BIAS_TILES:
        offs = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
        tl.atomic_add(DBIAS + slot.to(tl.int64) * (BLOCK_N * BLOCK_M) + offs, ds_t, mask=ok,
                      sem="relaxed")
    elif BIAS_AXES > 0:
        tl.atomic_add(DBIAS + idx_t, ds_t, mask=ok, sem="relaxed")
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)
    if FUSED_DQ:
        dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=DOT_PREC) * sm_scale
        _store_2d(DQ + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
                  dq.to(DQ.dtype.element_ty), m_ok, d_ok, EVEN_M, EVEN_D)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, O, DO, LSE, DELTA, DQ, DK, DV, QLO, QHI, KC,
                     FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, stride_plan,
                     BIAS, DBIAS, BC, stride_bias, bias_slots, n_slots, r0, r1, r2, w1, w2,
                     stride_qb, stride_qh, stride_qn, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_ob, stride_oh, stride_on, stride_od,
                     stride_dob, stride_doh, stride_don, stride_dod,
                     stride_dqb, stride_dqh, stride_dqn, stride_dqd,
                     stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                     stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                     stride_c, H, N, D, n_tiles, qk_scale, sm_scale,
                     A: tl.constexpr, PACKED: tl.constexpr, BIAS_AXES: tl.constexpr,
                     BIAS_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                     EVEN_D: tl.constexpr, DOT_PREC: tl.constexpr, FUSED_DQ: tl.constexpr,
                     TMA: tl.constexpr):
    """dK, dV of one key tile, walking the transposed plan (the query tiles that see it); with
    ``FUSED_DQ`` also dQ of those query tiles (see ``_dkdv_tile``)."""
    kv_tile, bh, b, h = _program(n_tiles, H)
    Q = _at_head(Q, b, h, stride_qb, stride_qh, TMA)
    K = _at_head(K, b, h, stride_kb, stride_kh, TMA)
    V = _at_head(V, b, h, stride_vb, stride_vh, TMA)
    O = _at_head(O, b, h, stride_ob, stride_oh, TMA)
    DO = _at_head(DO, b, h, stride_dob, stride_doh, TMA)
    DQ += b * stride_dqb + h * stride_dqh
    DK += b * stride_dkb + h * stride_dkh
    DV += b * stride_dvb + h * stride_dvh
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N
    BIAS += h * stride_bias
    if BIAS_TILES:
        DBIAS += h * stride_bias  # the expanded blocks of this head, summed over the batch
    else:
        # One table per (slot, batch, head), slot = key tile % n_slots: fewer programs add into
        # the same entries.
        n_bh = tl.num_programs(0) // n_tiles
        DBIAS += ((kv_tile % n_slots).to(tl.int64) * n_bh + bh) * stride_bias

    offs_n = kv_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < D
    k = _load_tile(K, b, h, kv_tile * BLOCK_N, offs_n, stride_kn, stride_kd, n_ok, d_ok,
                   BLOCK_N, BLOCK_D, EVEN_N, EVEN_D, TMA)
    v = _load_tile(V, b, h, kv_tile * BLOCK_N, offs_n, stride_vn, stride_vd, n_ok, d_ok,
                   BLOCK_N, BLOCK_D, EVEN_N, EVEN_D, TMA)
    c0, c1, c2 = _load_rows(KC, stride_c, offs_n, n_ok, A)
    kb0, kb1, kb2 = _load_rows(BC + BIAS_AXES * stride_c, stride_c, offs_n, n_ok, BIAS_AXES)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    for partial in tl.static_range(2):  # full tiles (no mask), then partial ones
        IDX, count, slot0 = _plan_row(FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, stride_plan,
                                      kv_tile, bias_slots, partial)
        for t in range(0, count):
            q_tile = tl.load(IDX + t)
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, O, DQ, LSE, DELTA, QLO, QHI, b, h, q_tile,
                                slot0 + t,
                                c0, c1, c2, BIAS, DBIAS, BC, kb0, kb1, kb2, r0, r1, r2, w1, w2,
                                stride_qn, stride_qd, stride_don, stride_dod,
                                stride_on, stride_od, stride_dqn, stride_dqd, stride_c, N, D,
                                qk_scale, sm_scale, offs_m0, offs_d, n_ok,
                                partial, A, PACKED, BIAS_AXES, BIAS_TILES, BLOCK_M, BLOCK_N,
                                BLOCK_D, EVEN_M, EVEN_N, EVEN_D, DOT_PREC, FUSED_DQ, TMA)

    dk = dk * sm_scale
    _store_2d(DK + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
              dk.to(DK.dtype.element_ty), n_ok, d_ok, EVEN_N, EVEN_D)
    _store_2d(DV + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
              dv.to(DV.dtype.element_ty), n_ok, d_ok, EVEN_N, EVEN_D)


@triton.jit
def _dq_step(dq, do, lse, delta, k, v, s, ok, MASKED: tl.constexpr, EVEN_N: tl.constexpr,
             DOT_PREC: tl.constexpr):
    """Add a key tile (``_tile_scores``' keys, values, scores and element mask) to dQ of one
    query tile."""
    p = tl.math.exp2(s - lse[:, None])
    if MASKED or not EVEN_N:
        p = tl.where(ok, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, O, DO, LSE, DELTA, DQ, QLO, QHI, KC,
                   FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, stride_plan,
                   BIAS, BC, stride_bias, bias_slots, r0, r1, r2, w1, w2,
                   stride_qb, stride_qh, stride_qn, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_on, stride_od,
                   stride_dob, stride_doh, stride_don, stride_dod,
                   stride_dqb, stride_dqh, stride_dqn, stride_dqd,
                   stride_c, H, N, D, n_tiles, qk_scale, sm_scale,
                   A: tl.constexpr, PACKED: tl.constexpr, BIAS_AXES: tl.constexpr,
                   BIAS_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                   EVEN_D: tl.constexpr, DOT_PREC: tl.constexpr, TMA: tl.constexpr):
    """dQ of one query tile, walking the forward-shaped plan.

    Runs before the dK/dV kernel: it also computes and stores ``delta = rowsum(dO * O)`` (fp32),
    the softmax-gradient row term that the dK/dV kernel reads back.
    """
    q_tile, bh, b, h = _program(n_tiles, H)
    Q = _at_head(Q, b, h, stride_qb, stride_qh, TMA)
    K = _at_head(K, b, h, stride_kb, stride_kh, TMA)
    V = _at_head(V, b, h, stride_vb, stride_vh, TMA)
    O = _at_head(O, b, h, stride_ob, stride_oh, TMA)
    DO = _at_head(DO, b, h, stride_dob, stride_doh, TMA)
    DQ += b * stride_dqb + h * stride_dqh
    BIAS += h * stride_bias

    offs_m = q_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    d_ok = offs_d < D
    q = _load_tile(Q, b, h, q_tile * BLOCK_M, offs_m, stride_qn, stride_qd, m_ok, d_ok,
                   BLOCK_M, BLOCK_D, EVEN_M, EVEN_D, TMA)
    do = _load_tile(DO, b, h, q_tile * BLOCK_M, offs_m, stride_don, stride_dod, m_ok, d_ok,
                    BLOCK_M, BLOCK_D, EVEN_M, EVEN_D, TMA)
    o = _load_tile(O, b, h, q_tile * BLOCK_M, offs_m, stride_on, stride_od, m_ok, d_ok,
                   BLOCK_M, BLOCK_D, EVEN_M, EVEN_D, TMA)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N + offs_m, delta, mask=m_ok)
    lse = tl.load(LSE + bh.to(tl.int64) * N + offs_m, mask=m_ok, other=float("inf")) * LOG2E
    lo0, span0, lo1, span1, lo2, span2 = _load_query_codes(QLO, QHI, stride_c, offs_m, m_ok,
                                                           A, PACKED)
    qb0, qb1, qb2 = _load_rows(BC, stride_c, offs_m, m_ok, BIAS_AXES)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for partial in tl.static_range(2):  # full tiles (no mask), then partial ones
        IDX, count, slot0 = _plan_row(FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, stride_plan,
                                      q_tile, bias_slots, partial)
        for t in range(0, count):
            kv_tile = tl.load(IDX + t)
            k, v, s, ok = _tile_scores(q, K, V, KC, b, h, kv_tile, slot0 + t,
                                       lo0, span0, lo1, span1, lo2, span2,
                                       BIAS, BC, qb0, qb1, qb2, r0, r1, r2, w1, w2,
                                       stride_kn, stride_kd, stride_vn, stride_vd, stride_c,
                                       N, D, qk_scale, offs_n0, offs_d,
                                       partial, A, PACKED, BIAS_AXES, BIAS_TILES, BLOCK_M,
                                       BLOCK_N, BLOCK_D, EVEN_N, EVEN_D, DOT_PREC, TMA)
            dq = _dq_step(dq, do, lse, delta, k, v, s, ok, partial, EVEN_N, DOT_PREC)

    dq = dq * sm_scale
    _store_2d(DQ + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
              dq.to(DQ.dtype.element_ty), m_ok, d_ok, EVEN_M, EVEN_D)
