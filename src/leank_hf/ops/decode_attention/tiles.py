"""Triton device functions both LeanK decode kernels use (`triton.py`, dynamic cache; `static_triton.py`, static).

A program attends tiles of keys of one `(batch row, KV head)` with all query heads of its GQA group as one tile
(online softmax in fp32, log2 domain), stores its normalised partial output and log-sum-exp, and the program that
finishes last merges the parts of its `(row, head)`.
"""

import triton
import triton.language as tl

from .layout import CODE_GROUP, VALUE_TILE
from .quantization import INT8_OFFSET

TOKEN_GROUP = tl.constexpr(CODE_GROUP)  # 8-bit values are read in whole groups of this many tokens
TOKEN_TILE = tl.constexpr(VALUE_TILE)  # and stored in tiles of this many, each a contiguous [HEAD_DIM, TOKEN_TILE]
INT8_CODE_OFFSET = tl.constexpr(float(INT8_OFFSET))  # int8 codes are stored as uint8 code + 128
INT8_READ_BIAS = tl.constexpr(1152.0)  # and read as code + 1152 (fp16 0x6400 + stored byte; int8_to_biased_half)
MIN_SCALE = tl.constexpr(2.0**-100)  # value scales below it (zero: all-zero values) weigh as it


@triton.jit
def online_softmax_step(scores, valid, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr):
    # scores [BLOCK_G, BLOCK_N] fp32 (log2 domain), valid [BLOCK_N], v [BLOCK_N, BLOCK_D].
    scores = tl.where(valid[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def attend_full_tile(
    m_i, l_i, acc, q, p_k, p_v, o_s, g, valid, stride_kt, stride_vt, p_key_mask, scale_log2, o_d, m_d,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
):  # fmt: skip
    # One tile of full-region slots o_s (global slots g, `valid` before the attention mask), all channels.
    if HAS_KEY_MASK:
        valid &= tl.load(p_key_mask + g, mask=valid, other=0) != 0
    mask = valid[:, None] & m_d[None, :]
    k = tl.load(p_k + o_s[:, None] * stride_kt + o_d[None, :], mask=mask, other=0.0)
    v = tl.load(p_v + o_s[:, None] * stride_vt + o_d[None, :], mask=mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    return online_softmax_step(scores, valid, v, m_i, l_i, acc, DOT_PRECISION)


@triton.jit
def load_query_part(p_q, p_channels, m_g, OFF: tl.constexpr, P: tl.constexpr, UPCAST: tl.constexpr):
    # The query's kept channels OFF .. OFF + P of this head, gathered: [BLOCK_G, P]
    channels = tl.load(p_channels + OFF + tl.arange(0, P))
    q = tl.load(p_q[:, None] + channels[None, :], mask=m_g[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    return q


@triton.jit
def int8_to_biased_half(codes):
    # int8 codes to fp16 as code + INT8_READ_BIAS, exactly and without integer-to-float conversions (a slow pipe): a
    # code b is stored as the byte b + 128 (INT8_OFFSET), which as the low byte under a high byte 0x64 is the fp16
    # number 1024 + b + 128. Four codes per 32-bit register: two byte permutes. attend_middle_codes removes the bias
    # from the products (it is the same for every code).
    return tl.inline_asm_elementwise(
        asm="""{
        prmt.b32 $0, $2, 0x64646464, 0x5140;
        prmt.b32 $1, $2, 0x64646464, 0x7362;
        }""",
        constraints="=r,=r,r",
        args=[codes],
        dtype=tl.float16,
        is_pure=True,
        pack=4,
    )


@triton.jit
def codes_to(x, dtype: tl.constexpr, BIASED: tl.constexpr):
    # A tile of the middle as `dtype` numbers: int8 codes (uint8, offset by 128) as the codes, or with BIASED (a
    # 16-bit model: products in fp16, or in fp32 when interpreting) as code + INT8_READ_BIAS, by int8_to_biased_half
    # for fp16; everything else by a cast (exact for e4m3 codes, which fp16 and fp32 represent exactly; e4m3 to fp16
    # is one paired hardware conversion).
    if x.dtype == tl.uint8:
        if not BIASED:
            return x.to(dtype) - INT8_CODE_OFFSET
        if dtype == tl.float16:
            return int8_to_biased_half(x)
        return x.to(dtype) + (INT8_READ_BIAS - INT8_CODE_OFFSET)
    return x.to(dtype)


@triton.jit
def query_parts(p_q, p_channels, m_g, W: tl.constexpr, UPCAST: tl.constexpr):
    # The query's kept channels of one head as the power-of-two column parts of the width W (256, 128, 64, 32 and 16
    # columns at increasing offsets, e.g. 96 = 64 + 32), each [BLOCK_G, P]; a part W lacks is an unread placeholder.
    q256 = tl.zeros([1, 1], dtype=tl.float32)
    q128 = q256
    q64 = q256
    q32 = q256
    q16 = q256
    if W & 256:
        q256 = load_query_part(p_q, p_channels, m_g, 0, 256, UPCAST)
    if W & 128:
        q128 = load_query_part(p_q, p_channels, m_g, W - W % 256, 128, UPCAST)
    if W & 64:
        q64 = load_query_part(p_q, p_channels, m_g, W - W % 128, 64, UPCAST)
    if W & 32:
        q32 = load_query_part(p_q, p_channels, m_g, W - W % 64, 32, UPCAST)
    if W & 16:
        q16 = load_query_part(p_q, p_channels, m_g, W - W % 32, 16, UPCAST)
    return q256, q128, q64, q32, q16


@triton.jit
def part_scores(
    scores, q, p_k, o_n, valid, W: tl.constexpr, P: tl.constexpr, KEYS_AS_ROWS: tl.constexpr,
    BIASED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # Keys of one tile are a contiguous [BLOCK_N, W] block; this reads the columns of its part P (see query_parts),
    # converted to the dtype of q (fp32 when interpreting; fp16 for 8-bit codes and a 16-bit model), and adds their
    # product with q: scores [BLOCK_G, BLOCK_N] += q [BLOCK_G, P] @ k^T, or with KEYS_AS_ROWS scores [BLOCK_N,
    # BLOCK_G] += k @ q, q being [P, BLOCK_G].
    OFF: tl.constexpr = W - W % (2 * P)
    k = tl.load(p_k + o_n[:, None] * W + OFF + tl.arange(0, P)[None, :], mask=valid[:, None], other=0.0)
    k = codes_to(k, q.dtype, BIASED)
    if KEYS_AS_ROWS:
        product = tl.dot(k, q, input_precision=DOT_PRECISION)
    else:
        product = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    return scores + product


@triton.jit
def tile_scores(
    scores, q256, q128, q64, q32, q16, p_k, o_n, valid, W: tl.constexpr, KEYS_AS_ROWS: tl.constexpr,
    BIASED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # scores plus the products of one tile's keys with every query part W has (see part_scores)
    if W & 256:
        scores = part_scores(scores, q256, p_k, o_n, valid, W, 256, KEYS_AS_ROWS, BIASED, DOT_PRECISION)
    if W & 128:
        scores = part_scores(scores, q128, p_k, o_n, valid, W, 128, KEYS_AS_ROWS, BIASED, DOT_PRECISION)
    if W & 64:
        scores = part_scores(scores, q64, p_k, o_n, valid, W, 64, KEYS_AS_ROWS, BIASED, DOT_PRECISION)
    if W & 32:
        scores = part_scores(scores, q32, p_k, o_n, valid, W, 32, KEYS_AS_ROWS, BIASED, DOT_PRECISION)
    if W & 16:
        scores = part_scores(scores, q16, p_k, o_n, valid, W, 16, KEYS_AS_ROWS, BIASED, DOT_PRECISION)
    return scores


@triton.jit
def row_abs_max(q):
    return tl.max(tl.abs(q.to(tl.float32)), 1)


@triton.jit
def normalized_query_part(q, inv_max, dtype: tl.constexpr):
    # q [BLOCK_G, P] divided by its rows' largest kept entry, in the middle's product dtype
    return (q.to(tl.float32) * inv_max[:, None]).to(dtype)


@triton.jit
def attend_middle(
    p_q, p_channels, m_g, p_k, p_v, stride_vt, p_key_mask, t_start, t_stop, scale_log2, p_key_scale,
    p_value_scale, W: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
    QUANT: tl.constexpr,
):  # fmt: skip
    # Softmax state (m_i, l_i, acc) of keys t_start .. t_stop of one head's middle: attend_middle_codes for an 8-bit
    # middle (QUANT; p_key_scale / p_value_scale point at this head's fp32 scales of middle index 0), else
    # attend_middle_values. stride_vt: of a token (values in the model's dtype) or of a tile (8-bit codes).
    if QUANT:
        m_i, l_i, acc = attend_middle_codes(
            p_q, p_channels, m_g, p_k, p_v, stride_vt, p_key_mask, t_start, t_stop, scale_log2,
            p_key_scale, p_value_scale, W, BLOCK_G, BLOCK_N, BLOCK_D, HEAD_DIM, UPCAST, DOT_PRECISION, HAS_KEY_MASK,
        )  # fmt: skip
    else:
        m_i, l_i, acc = attend_middle_values(
            p_q, p_channels, m_g, p_k, p_v, stride_vt, p_key_mask, t_start, t_stop, scale_log2, W, BLOCK_G,
            BLOCK_N, BLOCK_D, HEAD_DIM, UPCAST, DOT_PRECISION, HAS_KEY_MASK,
        )  # fmt: skip
    return m_i, l_i, acc


@triton.jit
def attend_middle_values(
    p_q, p_channels, m_g, p_k, p_v, stride_vt, p_key_mask, t_start, t_stop, scale_log2, W: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
):  # fmt: skip
    # A middle in the model's dtype, values token-major; the width W is read in power-of-two column parts, each fully
    # vectorised (query_parts).
    q256, q128, q64, q32, q16 = query_parts(p_q, p_channels, m_g, W, UPCAST)
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    # 64-bit tile pointers advanced per tile; in-tile offsets stay 32-bit.
    p_k_tile = p_k + t_start.to(tl.int64) * W
    p_v_tile = p_v + t_start.to(tl.int64) * stride_vt
    for start in range(t_start, t_stop, BLOCK_N):
        valid = start + o_n < t_stop
        if HAS_KEY_MASK:  # mask bytes of this tile's global slots (p_key_mask points at middle index 0)
            valid &= tl.load(p_key_mask + start + o_n, mask=valid, other=0) != 0
        scores = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
        scores = tile_scores(scores, q256, q128, q64, q32, q16, p_k_tile, o_n, valid, W, False, False, DOT_PRECISION)
        v = tl.load(p_v_tile + o_n[:, None] * stride_vt + o_d[None, :], mask=valid[:, None] & m_d[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        m_i, l_i, acc = online_softmax_step(scores * scale_log2, valid, v, m_i, l_i, acc, DOT_PRECISION)
        p_k_tile += BLOCK_N * W
        p_v_tile += BLOCK_N * stride_vt
    return m_i, l_i, acc


@triton.jit
def query_sums(q256, q128, q64, q32, q16, W: tl.constexpr, BLOCK_G: tl.constexpr):
    # [BLOCK_G] fp32: each query column's sum over the kept channels of the transposed parts [P, BLOCK_G] W has
    sums = tl.zeros([BLOCK_G], dtype=tl.float32)
    if W & 256:
        sums += tl.sum(q256.to(tl.float32), 0)
    if W & 128:
        sums += tl.sum(q128.to(tl.float32), 0)
    if W & 64:
        sums += tl.sum(q64.to(tl.float32), 0)
    if W & 32:
        sums += tl.sum(q32.to(tl.float32), 0)
    if W & 16:
        sums += tl.sum(q16.to(tl.float32), 0)
    return sums


@triton.jit
def transposed_query_part(q, inv_max, dtype: tl.constexpr):
    # q [BLOCK_G, P] divided by its rows' largest kept entry, as the [P, BLOCK_G] operand of the middle's products
    return tl.trans(normalized_query_part(q, inv_max, dtype))


@triton.jit
def attend_middle_codes(
    p_q, p_channels, m_g, p_k, p_v, stride_tile, p_key_mask, t_start, t_stop, scale_log2, p_key_scale,
    p_value_scale, W: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
):  # fmt: skip
    # An 8-bit middle, keys as the rows of both products: scores^T [BLOCK_N, BLOCK_G] = k [BLOCK_N, W] @ q^T and
    # acc^T [BLOCK_D, BLOCK_G] += v^T [BLOCK_D, BLOCK_N] @ p^T, so the codes (keys token-major, values channel-major
    # within their tiles) are the left operands, converted in registers, and the query the right one, loaded once. The
    # products run in fp16 for a 16-bit model (fp32 for an fp32 one or when interpreting): the codes convert exactly,
    # the query is divided by its largest kept entry (|q| <= 1) and the scores multiplied back, the value scales enter
    # the running maximum (below), so the value operand lies in [0, 1]; the probabilities' row sums are kept per key
    # (l_parts, summed once after the last tile). Softmax and accumulation stay fp32. For a 16-bit model int8 codes
    # are read as code + INT8_READ_BIAS (codes_to, BIASED): the score products start from minus the bias times the
    # query's column sums (the products' accumulator, so free), and the value product loses the bias times the
    # weights' sums after the last tile (kept per key like l_parts: no reduction across warps per tile). The
    # cancellation errs by ~1e-5 of the output's scale: below a 16-bit model's rounding, above an fp32 one's.
    CODE_DTYPE: tl.constexpr = tl.float32 if UPCAST or p_q.dtype.element_ty == tl.float32 else tl.float16
    BIASED: tl.constexpr = p_k.dtype.element_ty == tl.uint8 and p_q.dtype.element_ty != tl.float32
    q256, q128, q64, q32, q16 = query_parts(p_q, p_channels, m_g, W, UPCAST)
    q_max = tl.zeros([BLOCK_G], dtype=tl.float32)
    if W & 256:
        q_max = tl.maximum(q_max, row_abs_max(q256))
    if W & 128:
        q_max = tl.maximum(q_max, row_abs_max(q128))
    if W & 64:
        q_max = tl.maximum(q_max, row_abs_max(q64))
    if W & 32:
        q_max = tl.maximum(q_max, row_abs_max(q32))
    if W & 16:
        q_max = tl.maximum(q_max, row_abs_max(q16))
    q_max = tl.where(q_max > 0, q_max, 1.0)
    inv_max = 1.0 / q_max
    row_scale = q_max * scale_log2
    if W & 256:
        q256 = transposed_query_part(q256, inv_max, CODE_DTYPE)
    if W & 128:
        q128 = transposed_query_part(q128, inv_max, CODE_DTYPE)
    if W & 64:
        q64 = transposed_query_part(q64, inv_max, CODE_DTYPE)
    if W & 32:
        q32 = transposed_query_part(q32, inv_max, CODE_DTYPE)
    if W & 16:
        q16 = transposed_query_part(q16, inv_max, CODE_DTYPE)
    score_start = tl.zeros([BLOCK_N, BLOCK_G], dtype=tl.float32)
    if BIASED:  # q . (code + bias) = q . code + bias * sum(q), q exactly as the products read it
        score_start -= INT8_READ_BIAS * query_sums(q256, q128, q64, q32, q16, W, BLOCK_G)[None, :]
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_parts = tl.zeros([BLOCK_N, BLOCK_G], dtype=tl.float32)
    w_parts = tl.zeros([BLOCK_N, BLOCK_G], dtype=tl.float32)  # the value operand's running sums per key (BIASED)
    acc = tl.zeros([BLOCK_D, BLOCK_G], dtype=tl.float32)
    # Tiles start on a TOKEN_GROUP boundary, so the values load aligned; they are read in whole groups (a 16-byte run
    # per channel; the storage has room, layout.new_value_storage), keys and scales only where valid. The codes of
    # token t sit in stored tile t // TOKEN_TILE, column t % TOKEN_TILE (a tile is [HEAD_DIM, TOKEN_TILE]); a tile of
    # BLOCK_N keys may start inside a stored one and reach into the next.
    t_first = t_start // TOKEN_GROUP * TOKEN_GROUP
    t_groups = (t_stop + TOKEN_GROUP - 1) // TOKEN_GROUP * TOKEN_GROUP
    # 64-bit tile pointers advanced per tile; in-tile offsets stay 32-bit.
    p_k_tile = p_k + t_first.to(tl.int64) * W
    p_v_tile = p_v + (t_first // TOKEN_TILE).to(tl.int64) * stride_tile
    tile_offset = t_first % TOKEN_TILE  # of the key tile's first token in its stored tile
    for start in range(t_first, t_stop, BLOCK_N):
        valid = (start + o_n < t_stop) & (start + o_n >= t_start)
        if HAS_KEY_MASK:  # mask bytes of this tile's global slots (p_key_mask points at middle index 0)
            valid &= tl.load(p_key_mask + start + o_n, mask=valid, other=0) != 0
        scores = tile_scores(
            score_start, q256, q128, q64, q32, q16, p_k_tile, o_n, valid, W, True, BIASED, DOT_PRECISION
        )
        v_rows = start + o_n < t_groups
        n_in = tile_offset + o_n
        v_cols = (n_in // TOKEN_TILE) * stride_tile + n_in % TOKEN_TILE
        v_cols = tl.max_contiguous(tl.multiple_of(v_cols, TOKEN_GROUP), TOKEN_GROUP)  # whole aligned 16-token groups
        p_vt = p_v_tile + o_d[:, None] * TOKEN_TILE + v_cols[None, :]
        vt = tl.load(p_vt, mask=m_d[:, None] & v_rows[None, :], other=0.0)
        vt = codes_to(vt, CODE_DTYPE, BIASED)
        key_scale = tl.load(p_key_scale + start + o_n, mask=valid, other=0.0)
        value_scale = tl.load(p_value_scale + start + o_n, mask=valid, other=1.0)
        # q . (s k) = s (q . k): logits (log2 domain) = scores * key scale * row_scale. The running maximum m is that
        # of logits + log2(value scale) (a zero scale, all-zero values, counts as MIN_SCALE), so the value operand
        # p * (value scale) = exp2(logits + log2(value scale) - m) lies in [0, 1] whatever the scales' magnitude, and
        # the probabilities p = exp2(logits - m) share that m (each at most 1 / MIN_SCALE).
        logits = tl.where(valid[:, None], scores * key_scale[:, None] * row_scale[None, :], float("-inf"))
        value_scale = tl.maximum(value_scale, MIN_SCALE)
        m_new = tl.maximum(m_i, tl.max(logits + tl.log2(value_scale)[:, None], 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(logits - m_safe[None, :])
        l_parts = l_parts * alpha[None, :] + p
        weights = (p * value_scale[:, None]).to(CODE_DTYPE)
        if BIASED:
            w_parts = w_parts * alpha[None, :] + weights.to(tl.float32)
        acc = acc * alpha[None, :] + tl.dot(vt, weights, input_precision=DOT_PRECISION)
        m_i = m_new
        p_k_tile += BLOCK_N * W
        tile_offset += BLOCK_N
        p_v_tile += (tile_offset // TOKEN_TILE).to(tl.int64) * stride_tile
        tile_offset %= TOKEN_TILE
    if BIASED:  # v^T (code + bias) @ w = v^T code @ w + bias * sum(w) in every channel
        acc -= INT8_READ_BIAS * tl.sum(w_parts, 0)[None, :]
    return m_i, tl.sum(l_parts, 0), tl.trans(acc)


@triton.jit
def merge_parts(
    O_PART, LSE_PART, OUT, row0, num_parts,
    G: tl.constexpr, G_POW: tl.constexpr, MERGE_S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Query-head rows row0 .. row0 + G - 1 of O_PART [B * Hq, num_parts, HEAD_DIM], LSE_PART [B * Hq, num_parts] and
    # OUT [B * Hq, HEAD_DIM]
    o_g = tl.arange(0, G_POW)
    o_s = tl.arange(0, MERGE_S)
    o_d = tl.arange(0, BLOCK_D)
    m_g = o_g < G
    m_d = o_d < HEAD_DIM
    rows = row0 + o_g
    m_i = tl.full([G_POW], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([G_POW], dtype=tl.float32)
    acc = tl.zeros([G_POW, BLOCK_D], dtype=tl.float32)
    for start in range(0, num_parts, MERGE_S):
        parts = start + o_s
        m_gs = m_g[:, None] & (parts < num_parts)[None, :]
        p_parts = rows[:, None] * num_parts + parts[None, :]  # [G_POW, MERGE_S]
        lse = tl.load(LSE_PART + p_parts, mask=m_gs, other=float("-inf"), cache_modifier=".cg")
        p_o = O_PART + p_parts[:, :, None] * HEAD_DIM + o_d[None, None, :]  # [G_POW, MERGE_S, BLOCK_D]
        o = tl.load(p_o, mask=m_gs[:, :, None] & m_d[None, None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_i, tl.max(lse, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        weights = tl.exp2(lse - m_safe[:, None])  # 0 for parts without keys
        l_i = l_i * alpha + tl.sum(weights, 1)
        acc = acc * alpha[:, None] + tl.sum(weights[:, :, None] * o, 1)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    p_out = OUT + rows[:, None] * HEAD_DIM + o_d[None, :]
    tl.store(p_out, out.to(OUT.dtype.element_ty), mask=m_g[:, None] & m_d[None, :])


@triton.jit
def store_part_and_merge(
    m_i, l_i, acc, O_PART, LSE_PART, COUNTERS, OUT, i_b, i_h, i_part, num_parts,
    G: tl.constexpr, G_POW: tl.constexpr, MERGE_S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Normalised partial output and its log2-sum-exp; -inf (and zeros) where no key was valid.
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < G
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    # O_PART [B, Hq, num_parts, HEAD_DIM] and LSE_PART [B, Hq, num_parts], both contiguous
    row0 = (i_b * tl.num_programs(1) + i_h) * G  # first query head row of this (batch row, KV head)
    o_part = (row0 + o_g) * num_parts + i_part  # [BLOCK_G] int64
    tl.store(O_PART + o_part[:, None] * HEAD_DIM + o_d[None, :], out, mask=m_g[:, None] & m_d[None, :])
    tl.store(LSE_PART + o_part, lse, mask=m_g)
    # Every thread's stores precede the counter bump (release); the last program sees all parts (acquire).
    tl.debug_barrier()
    p_counter = COUNTERS + i_b * tl.num_programs(1) + i_h
    if tl.atomic_add(p_counter, 1, sem="acq_rel") == num_parts - 1:
        tl.atomic_xchg(p_counter, 0)
        merge_parts(O_PART, LSE_PART, OUT, row0, num_parts, G, G_POW, MERGE_S, HEAD_DIM, BLOCK_D)
