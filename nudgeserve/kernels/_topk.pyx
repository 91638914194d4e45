"""Masked top-k over each row of a float32 batch, GIL released, rows in parallel.

Same contract as ``_topk_ref.topk`` (the NumPy oracle): per row the valid candidates (not
masked, not NaN) by score descending, ties to the lower index, padded with -1 / NaN.

Per row the k best so far live directly in the row's output slices (no scratch memory),
either as a sorted buffer (small k: insertion) or as a binary heap whose root is the
worst kept (large k: O(log k) per accepted element, put in order at the end). Once k
valid elements are kept, an element can only enter if it beats the current k-th best,
and because elements arrive in index order a tie never does: ``v > thr`` is the test.

Most elements never get that far. The row is read in blocks of 16 with SSE2 (4 lanes):

- priming: the maxima of the first (up to 256) blocks are computed and split into k
  groups; the smallest group maximum is a lower bound on the row's k-th best (k distinct
  valid elements reach it), so while the buffer fills, blocks and elements below it are
  skipped, which is when a running threshold does not exist yet;
- scanning: for each block one compare per 4 elements yields the candidates as a bit
  mask (or the stored block maximum rules the block out at once), and only those
  elements are read again, in index order.

On random rows this costs about one SIMD compare per 4 elements plus O(k log(N/k))
insertions. Rows sorted ascending are the worst case (every element enters). Without
SSE2 the same code runs with scalar loops.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN
from libc.stdint cimport int64_t, uint8_t

import numpy as np

cdef enum:
    # Elements per branch-free "any above threshold?" test.
    BLOCK = 16
    # Above this k a heap beats shifting a sorted buffer (adversarial, ascending rows
    # make every element enter, at O(k) per insertion into a sorted buffer).
    INSERTION_MAX_K = 48
    # Rows x columns below which one thread is faster than starting an OpenMP team.
    PARALLEL_MIN_ELEMENTS = 32768
    CHUNK_ELEMENTS = 16384
    # Blocks whose maxima prime the threshold, and the largest k that is primed.
    PRIME_BLOCKS = 256
    PRIME_MAX_K = 64
    # Largest heap put in order by insertion sort rather than heap-sort.
    FINAL_INSERTION_MAX = 256


cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    /* MAXPS returns its second operand when either is NaN: max(x, -inf) turns NaN
       lanes into -inf and leaves every other lane as it is. */
    static inline __m128 ns_load4(const float* x, const uint8_t* m, int lane,
                                  __m128i keep16lo, __m128i keep16hi) {
        __m128 v = _mm_loadu_ps(x + 4 * lane);
        if (m != NULL) {
            __m128i half = lane < 2 ? keep16lo : keep16hi;
            __m128i keep = (lane & 1) ? _mm_unpackhi_epi16(half, half)
                                      : _mm_unpacklo_epi16(half, half);
            __m128 kf = _mm_castsi128_ps(keep);
            v = _mm_or_ps(_mm_and_ps(kf, v), _mm_andnot_ps(kf, _mm_set1_ps(-INFINITY)));
        }
        return _mm_max_ps(v, _mm_set1_ps(-INFINITY));
    }
    /* Largest valid (not NaN, not masked) value of x[0..16), -inf if none. */
    static inline float ns_block16_max(const float* x, const uint8_t* m) {
        __m128i keep16lo = _mm_setzero_si128(), keep16hi = _mm_setzero_si128();
        if (m != NULL) {
            __m128i keep8 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)m),
                                           _mm_setzero_si128());
            keep16lo = _mm_unpacklo_epi8(keep8, keep8);
            keep16hi = _mm_unpackhi_epi8(keep8, keep8);
        }
        __m128 a = ns_load4(x, m, 0, keep16lo, keep16hi);
        __m128 b = ns_load4(x, m, 1, keep16lo, keep16hi);
        __m128 c = ns_load4(x, m, 2, keep16lo, keep16hi);
        __m128 d = ns_load4(x, m, 3, keep16lo, keep16hi);
        __m128 r = _mm_max_ps(_mm_max_ps(a, b), _mm_max_ps(c, d));
        r = _mm_max_ps(r, _mm_shuffle_ps(r, r, _MM_SHUFFLE(1, 0, 3, 2)));
        r = _mm_max_ps(r, _mm_shuffle_ps(r, r, _MM_SHUFFLE(2, 3, 0, 1)));
        return _mm_cvtss_f32(r);
    }
    /* Bit i set when x[i] > thr, for i < 16 (NaN never is; the mask is not consulted). */
    static inline int ns_block16_bits_above(const float* x, float thr) {
        __m128 t = _mm_set1_ps(thr);
        return _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x), t))
             | _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + 4), t)) << 4
             | _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + 8), t)) << 8
             | _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + 12), t)) << 12;
    }
    /* Bit i set when x[i] >= thr. */
    static inline int ns_block16_bits_at_least(const float* x, float thr) {
        __m128 t = _mm_set1_ps(thr);
        return _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x), t))
             | _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + 4), t)) << 4
             | _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + 8), t)) << 8
             | _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + 12), t)) << 12;
    }
    #else
    static inline float ns_block16_max(const float* x, const uint8_t* m) {
        float r = -INFINITY;
        for (int i = 0; i < 16; i++)
            if (x[i] > r && (m == NULL || m[i] == 0)) r = x[i];
        return r;
    }
    static inline int ns_block16_bits_above(const float* x, float thr) {
        int bits = 0;
        for (int i = 0; i < 16; i++) bits |= (x[i] > thr) << i;
        return bits;
    }
    static inline int ns_block16_bits_at_least(const float* x, float thr) {
        int bits = 0;
        for (int i = 0; i < 16; i++) bits |= (x[i] >= thr) << i;
        return bits;
    }
    #endif
    #if defined(__GNUC__)
    #define ns_lowest_bit(bits) __builtin_ctz(bits)
    #else
    static inline int ns_lowest_bit(int bits) {
        int i = 0;
        while (!(bits & 1)) { bits >>= 1; i++; }
        return i;
    }
    #endif
    """
    float ns_block16_max(const float* x, const uint8_t* m) noexcept nogil
    int ns_block16_bits_above(const float* x, float thr) noexcept nogil
    int ns_block16_bits_at_least(const float* x, float thr) noexcept nogil
    int ns_lowest_bit(int bits) noexcept nogil


cdef inline bint _worse(float va, int64_t ia, float vb, int64_t ib) noexcept nogil:
    # The heap orders by "worse": lower score, or the same score at a higher index.
    return va < vb or (va == vb and ia > ib)


cdef inline void _sift_down(float* hv, int64_t* hi, Py_ssize_t size,
                            Py_ssize_t pos) noexcept nogil:
    cdef float v = hv[pos]
    cdef int64_t i = hi[pos]
    cdef Py_ssize_t child
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(hv[child + 1], hi[child + 1], hv[child], hi[child]):
            child += 1
        if not _worse(hv[child], hi[child], v, i):
            break
        hv[pos] = hv[child]
        hi[pos] = hi[child]
        pos = child
    hv[pos] = v
    hi[pos] = i


cdef inline void _heap_push(float* hv, int64_t* hi, Py_ssize_t size, float v,
                            int64_t i) noexcept nogil:
    cdef Py_ssize_t pos = size, parent
    while pos > 0:
        parent = (pos - 1) // 2
        if not _worse(v, i, hv[parent], hi[parent]):
            break
        hv[pos] = hv[parent]
        hi[pos] = hi[parent]
        pos = parent
    hv[pos] = v
    hi[pos] = i


cdef inline void _sort_best_first(float* hv, int64_t* hi, Py_ssize_t size) noexcept nogil:
    """Order a heap best-first."""
    cdef Py_ssize_t end, pos, t
    cdef float v
    cdef int64_t i
    if size <= FINAL_INSERTION_MAX:
        # Insertion sort: more moves than heap-sort but predictable branches, which wins
        # at these sizes.
        for t in range(1, size):
            v = hv[t]
            i = hi[t]
            pos = t
            while pos > 0 and _worse(hv[pos - 1], hi[pos - 1], v, i):
                hv[pos] = hv[pos - 1]
                hi[pos] = hi[pos - 1]
                pos -= 1
            hv[pos] = v
            hi[pos] = i
        return
    # Heap-sort: repeatedly move the worst (the root) to the end.
    for end in range(size - 1, 0, -1):
        v = hv[end]
        i = hi[end]
        hv[end] = hv[0]
        hi[end] = hi[0]
        hv[0] = v
        hi[0] = i
        _sift_down(hv, hi, end, 0)


cdef inline void _insert_sorted(float* bv, int64_t* bi, Py_ssize_t last, float v,
                                int64_t i) noexcept nogil:
    # bv[0..last) is sorted best-first; the new element arrives after every kept one in
    # index order, so it goes behind equal scores.
    cdef Py_ssize_t pos = last
    while pos > 0 and bv[pos - 1] < v:
        bv[pos] = bv[pos - 1]
        bi[pos] = bi[pos - 1]
        pos -= 1
    bv[pos] = v
    bi[pos] = i


cdef inline void _insert_sorted_value(float* buf, Py_ssize_t last, float v) noexcept nogil:
    cdef Py_ssize_t pos = last
    while pos > 0 and buf[pos - 1] < v:
        buf[pos] = buf[pos - 1]
        pos -= 1
    buf[pos] = v


cdef inline float _accept(float* bv, int64_t* bi, Py_ssize_t k, bint use_heap, float v,
                          int64_t i) noexcept nogil:
    """Replace the worst kept element by (v, i); returns the new threshold."""
    if use_heap:
        bv[0] = v
        bi[0] = i
        _sift_down(bv, bi, k, 0)
        return bv[0]
    _insert_sorted(bv, bi, k - 1, v, i)
    return bv[k - 1]


cdef Py_ssize_t _topk_row(const float* x, const uint8_t* m, Py_ssize_t n, Py_ssize_t k,
                          float* bv, int64_t* bi) noexcept nogil:
    """Top-k of one row into bv/bi (length k, best first, padded); returns the count."""
    cdef bint use_heap = k > INSERTION_MAX_K
    cdef Py_ssize_t n_blocks = n // BLOCK, n_primed = 0, b, j, t, count = 0
    cdef float block_max[PRIME_BLOCKS]
    cdef float v, floor_value = -INFINITY, thr = -INFINITY
    cdef Py_ssize_t g
    cdef int bits
    # Prime: split the first blocks into k groups; each group's maximum is a distinct
    # valid element (unless -inf), so the smallest group maximum is a lower bound on the
    # row's k-th best, and blocks and elements below it can be skipped while the buffer
    # is still filling, when no running threshold exists yet.
    if k <= PRIME_MAX_K and n_blocks >= k:
        n_primed = min(n_blocks, <Py_ssize_t>PRIME_BLOCKS)
        for b in range(n_primed):
            block_max[b] = ns_block16_max(x + b * BLOCK, m + b * BLOCK if m != NULL else NULL)
        floor_value = INFINITY
        for g in range(k):
            v = -INFINITY
            for b in range(g * n_primed // k, (g + 1) * n_primed // k):
                v = block_max[b] if block_max[b] > v else v
            floor_value = v if v < floor_value else floor_value
    for b in range(n_blocks):
        # Skip on the stored maximum where there is one; otherwise one SIMD compare per
        # 4 elements gives the candidates as bits, and only those are read again.
        if count < k:
            if b < n_primed and block_max[b] < floor_value:
                continue
            bits = ns_block16_bits_at_least(x + b * BLOCK, floor_value)
        else:
            if b < n_primed and block_max[b] <= thr:
                continue
            bits = ns_block16_bits_above(x + b * BLOCK, thr)
        while bits:
            j = b * BLOCK + ns_lowest_bit(bits)
            bits &= bits - 1
            count = _offer(x, m, j, k, use_heap, count, floor_value, &thr, bv, bi)
    for j in range(n_blocks * BLOCK, n):
        count = _offer(x, m, j, k, use_heap, count, floor_value, &thr, bv, bi)
    if use_heap:
        _sort_best_first(bv, bi, count)
    for t in range(count, k):
        bv[t] = NAN
        bi[t] = -1
    return count


cdef inline Py_ssize_t _offer(const float* x, const uint8_t* m, Py_ssize_t j, Py_ssize_t k,
                              bint use_heap, Py_ssize_t count, float floor_value,
                              float* thr, float* bv, int64_t* bi) noexcept nogil:
    """Offer element j to the buffer; returns the new count (updates *thr once full)."""
    cdef float v = x[j]
    if count == k:
        if v > thr[0] and (m == NULL or m[j] == 0):
            thr[0] = _accept(bv, bi, k, use_heap, v, j)
        return count
    # NaN fails ``>=`` so it never enters.
    if v >= floor_value and (m == NULL or m[j] == 0):
        if use_heap:
            _heap_push(bv, bi, count, v, j)
        else:
            _insert_sorted(bv, bi, count, v, j)
        count += 1
        if count == k:
            thr[0] = bv[0] if use_heap else bv[k - 1]
    return count


def topk(const float[:, ::1] scores, Py_ssize_t k, mask, int n_threads=1):
    """Top-k per row; see the module docstring and ``_topk_ref.topk``.

    scores: float32[B, N] C-contiguous; k >= 0; mask: bool[B, N] C-contiguous or None
    (True = excluded); n_threads: OpenMP threads for the rows (used when B*N is large).
    Returns (indices: int64[B, k], values: float32[B, k]).
    """
    cdef Py_ssize_t n_rows = scores.shape[0], n_cols = scores.shape[1], r
    indices_arr = np.empty((n_rows, k), dtype=np.int64)
    values_arr = np.empty((n_rows, k), dtype=np.float32)
    if n_rows == 0 or k == 0:
        return indices_arr, values_arr
    if n_cols == 0:
        indices_arr.fill(-1)
        values_arr.fill(np.nan)
        return indices_arr, values_arr
    cdef int64_t[:, ::1] indices = indices_arr
    cdef float[:, ::1] values = values_arr
    cdef const uint8_t[:, ::1] mask_bytes
    cdef const uint8_t* mask_base = NULL
    if mask is not None:
        mask_bytes = mask.view(np.uint8)
        mask_base = &mask_bytes[0, 0]
    cdef const float* score_base = &scores[0, 0]
    cdef float* value_base = &values[0, 0]
    cdef int64_t* index_base = &indices[0, 0]
    cdef bint parallel = n_threads > 1 and n_rows > 1 and n_rows * n_cols >= PARALLEL_MIN_ELEMENTS
    cdef Py_ssize_t chunk_rows = max(1, CHUNK_ELEMENTS // n_cols)
    with nogil:
        if parallel:
            # Dynamic chunks of ~CHUNK_ELEMENTS: a thread the OS parks for a while (a
            # busy server) delays only its current chunk, not a static share of rows.
            for r in prange(n_rows, num_threads=n_threads, schedule="dynamic",
                            chunksize=chunk_rows):
                _topk_row(score_base + r * n_cols,
                          mask_base + r * n_cols if mask_base != NULL else NULL,
                          n_cols, k, value_base + r * k, index_base + r * k)
        else:
            for r in range(n_rows):
                _topk_row(score_base + r * n_cols,
                          mask_base + r * n_cols if mask_base != NULL else NULL,
                          n_cols, k, value_base + r * k, index_base + r * k)
    return indices_arr, values_arr
