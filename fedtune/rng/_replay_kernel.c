/* fedtune's replay kernel: w += c_s * z(seed_s, name) for a list of (seed, c) pairs, in order.
 *
 * Built at first use by fedtune/rng/_fast.py with the machine's C compiler
 * (cc -O3 -march=native -pthread, never -ffast-math) and loaded through ctypes; the same
 * .so serves torch CPU tensors and numpy arrays (it only sees raw pointers).
 *
 * The stream is fedtune.rng's (the Python module is the definition, pinned by tests/rng):
 *   key      = splitmix64(seed ^ name_key),  name_key = splitmix64(fnv1a64(utf8(name)))
 *   word_j   = splitmix64(key + (j + 1) * GOLDEN)
 *   z_i      = +1 if bit (i % 64) of word (i / 64) is 0, else -1
 * and the canonical update: per element, per (seed, c) in the given order, one correctly
 * rounded addition of +c or -c (c already rounded to the element type by the caller, the
 * table-free way: +c and -c differ in the sign bit only, so they are picked, never
 * multiplied). What changes against the Python path is only the loop order *across*
 * elements: the weights are walked once in 64-element tiles kept in registers while every
 * direction of the call is added to them, so the memory traffic is one read and one write
 * of the weights per call instead of one per direction. The per-element sequence of
 * additions, hence every bit, is the same.
 *
 * float16 elements are added in float32 and rounded back to float16 after every addition:
 * float32 holds 2*11+2 significand bits, so this double rounding is innocuous and each
 * step is the correctly rounded float16 sum (what numpy and torch compute too).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define FT_AVX2 1
#else
#define FT_AVX2 0
#endif

#define GOLDEN 0x9E3779B97F4A7C15ULL
#define MIX1 0xBF58476D1CE4E5B9ULL
#define MIX2 0x94D049BB133111EBULL
/* Tiles per work item handed to a thread (64 elements a tile). */
#define TILES_PER_ITEM 512
/* Directions whose words are hashed at once per tile (stack buffer). */
#define SEED_BATCH 256

enum { FT_F32 = 0, FT_F64 = 1, FT_F16 = 2, FT_BF16 = 3 };

static inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * MIX1;
    z = (z ^ (z >> 27)) * MIX2;
    return z ^ (z >> 31);
}

/* ---- float16 <-> float32, scalar (tails; and the portable build) ---------------------- */
static inline float half_to_float(uint16_t h) {
#if FT_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
        }
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline uint16_t float_to_half(float f) {
#if FT_AVX2
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u | ((ax >> 13) & 0x3FFu) : 0));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to inf */
    if (ax < 0x38800000u) {                                     /* float16 subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7FFFFFu) | 0x800000u, shift = 126 - e;
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u; /* rebias */
    uint32_t keep = r >> 13, rem = r & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (keep & 1u))) keep++;
    return (uint16_t)(sign | keep);
#endif
}

/* ---- bfloat16 <-> float32: the high half of a float32; round to nearest even, NaN -> 0x7FC0
 * (torch's c10::BFloat16 rounding, which ml_dtypes shares for finite values) --------------- */
static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/* ---- one tile: 64 elements (or fewer at a tensor's end), every direction -------------- */

static void tile_scalar(int dtype, void *base, int64_t count, const uint64_t *w, int64_t nseeds,
                        const uint64_t *cbits) {
    for (int64_t i = 0; i < count; i++) {
        if (dtype == FT_F32) {
            float *p = (float *)base + i, acc = *p;
            for (int64_t s = 0; s < nseeds; s++) {
                uint32_t cb = (uint32_t)cbits[s] ^ ((uint32_t)((w[s] >> i) & 1u) << 31);
                float c;
                memcpy(&c, &cb, 4);
                acc = acc + c;
            }
            *p = acc;
        } else if (dtype == FT_F64) {
            double *p = (double *)base + i, acc = *p;
            for (int64_t s = 0; s < nseeds; s++) {
                uint64_t cb = cbits[s] ^ (((w[s] >> i) & 1u) << 63);
                double c;
                memcpy(&c, &cb, 8);
                acc = acc + c;
            }
            *p = acc;
        } else if (dtype == FT_F16) {
            uint16_t *p = (uint16_t *)base + i, acc = *p;
            for (int64_t s = 0; s < nseeds; s++) {
                uint16_t cb = (uint16_t)((uint16_t)cbits[s] ^ (uint16_t)(((w[s] >> i) & 1u) << 15));
                acc = float_to_half(half_to_float(acc) + half_to_float(cb));
            }
            *p = acc;
        } else {
            uint16_t *p = (uint16_t *)base + i, acc = *p;
            for (int64_t s = 0; s < nseeds; s++) {
                uint16_t cb = (uint16_t)((uint16_t)cbits[s] ^ (uint16_t)(((w[s] >> i) & 1u) << 15));
                acc = float_to_bf16(bf16_to_float(acc) + bf16_to_float(cb));
            }
            *p = acc;
        }
    }
}

#if FT_AVX2
/* Lane l of group g (elements 8g..8g+7 of the tile) tests bit 8g+l of the word: shifting
 * the word's 32-bit half left by 31 - (8g + l) % 32 moves that bit to the sign bit, which
 * is all that blendv reads. */
static inline __m256i shifts_for(int g) {
    int b = (g % 4) * 8;
    return _mm256_setr_epi32(31 - b, 30 - b, 29 - b, 28 - b, 27 - b, 26 - b, 25 - b, 24 - b);
}

static void tile_f32(float *p, const uint64_t *w, int64_t nseeds, const float *pos, const float *neg) {
    const __m256i s0 = shifts_for(0), s1 = shifts_for(1), s2 = shifts_for(2), s3 = shifts_for(3);
    __m256 a0 = _mm256_loadu_ps(p), a1 = _mm256_loadu_ps(p + 8), a2 = _mm256_loadu_ps(p + 16),
           a3 = _mm256_loadu_ps(p + 24), a4 = _mm256_loadu_ps(p + 32), a5 = _mm256_loadu_ps(p + 40),
           a6 = _mm256_loadu_ps(p + 48), a7 = _mm256_loadu_ps(p + 56);
    for (int64_t s = 0; s < nseeds; s++) {
        const __m256 vp = _mm256_broadcast_ss(pos + s), vn = _mm256_broadcast_ss(neg + s);
        const __m256i lo = _mm256_set1_epi32((int32_t)(uint32_t)w[s]);
        const __m256i hi = _mm256_set1_epi32((int32_t)(uint32_t)(w[s] >> 32));
#define FT_STEP(acc, half, sh) \
    acc = _mm256_add_ps(acc, _mm256_blendv_ps(vp, vn, _mm256_castsi256_ps(_mm256_sllv_epi32(half, sh))))
        FT_STEP(a0, lo, s0); FT_STEP(a1, lo, s1); FT_STEP(a2, lo, s2); FT_STEP(a3, lo, s3);
        FT_STEP(a4, hi, s0); FT_STEP(a5, hi, s1); FT_STEP(a6, hi, s2); FT_STEP(a7, hi, s3);
#undef FT_STEP
    }
    _mm256_storeu_ps(p, a0); _mm256_storeu_ps(p + 8, a1); _mm256_storeu_ps(p + 16, a2);
    _mm256_storeu_ps(p + 24, a3); _mm256_storeu_ps(p + 32, a4); _mm256_storeu_ps(p + 40, a5);
    _mm256_storeu_ps(p + 48, a6); _mm256_storeu_ps(p + 56, a7);
}

static void tile_f16(uint16_t *p, const uint64_t *w, int64_t nseeds, const float *pos, const float *neg) {
    const __m256i s0 = shifts_for(0), s1 = shifts_for(1), s2 = shifts_for(2), s3 = shifts_for(3);
    __m256 a[8];
    for (int g = 0; g < 8; g++) a[g] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8 * g)));
    for (int64_t s = 0; s < nseeds; s++) {
        const __m256 vp = _mm256_broadcast_ss(pos + s), vn = _mm256_broadcast_ss(neg + s);
        const __m256i lo = _mm256_set1_epi32((int32_t)(uint32_t)w[s]);
        const __m256i hi = _mm256_set1_epi32((int32_t)(uint32_t)(w[s] >> 32));
#define FT_STEP(acc, half, sh)                                                              \
    acc = _mm256_cvtph_ps(_mm256_cvtps_ph(                                                  \
        _mm256_add_ps(acc, _mm256_blendv_ps(vp, vn, _mm256_castsi256_ps(_mm256_sllv_epi32(half, sh)))), \
        _MM_FROUND_TO_NEAREST_INT))
        FT_STEP(a[0], lo, s0); FT_STEP(a[1], lo, s1); FT_STEP(a[2], lo, s2); FT_STEP(a[3], lo, s3);
        FT_STEP(a[4], hi, s0); FT_STEP(a[5], hi, s1); FT_STEP(a[6], hi, s2); FT_STEP(a[7], hi, s3);
#undef FT_STEP
    }
    for (int g = 0; g < 8; g++)
        _mm_storeu_si128((__m128i *)(p + 8 * g), _mm256_cvtps_ph(a[g], _MM_FROUND_TO_NEAREST_INT));
}

/* bfloat16: eight lanes of float32 holding bfloat16 values (low halves zero); each addition
 * is rounded back to bfloat16 in the float32 lanes (round to nearest even on the bits, NaN
 * to 0x7FC0), so every element sees exactly float_to_bf16(bf16_to_float(acc) + c). */
static inline __m256 round_bf16(__m256 x) {
    const __m256i b = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_and_si256(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))),
                                       _mm256_set1_epi32((int32_t)0xFFFF0000u));
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), nan);
}

static void tile_bf16(uint16_t *p, const uint64_t *w, int64_t nseeds, const float *pos, const float *neg) {
    const __m256i s0 = shifts_for(0), s1 = shifts_for(1), s2 = shifts_for(2), s3 = shifts_for(3);
    __m256 a[8];
    for (int g = 0; g < 8; g++)
        a[g] = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 8 * g))), 16));
    for (int64_t s = 0; s < nseeds; s++) {
        const __m256 vp = _mm256_broadcast_ss(pos + s), vn = _mm256_broadcast_ss(neg + s);
        const __m256i lo = _mm256_set1_epi32((int32_t)(uint32_t)w[s]);
        const __m256i hi = _mm256_set1_epi32((int32_t)(uint32_t)(w[s] >> 32));
#define FT_STEP(acc, half, sh) \
    acc = round_bf16(_mm256_add_ps(acc, _mm256_blendv_ps(vp, vn, _mm256_castsi256_ps(_mm256_sllv_epi32(half, sh)))))
        FT_STEP(a[0], lo, s0); FT_STEP(a[1], lo, s1); FT_STEP(a[2], lo, s2); FT_STEP(a[3], lo, s3);
        FT_STEP(a[4], hi, s0); FT_STEP(a[5], hi, s1); FT_STEP(a[6], hi, s2); FT_STEP(a[7], hi, s3);
#undef FT_STEP
    }
    for (int g = 0; g < 8; g++) {
        uint32_t lanes[8];
        _mm256_storeu_si256((__m256i *)lanes, _mm256_castps_si256(a[g]));
        for (int l = 0; l < 8; l++) p[8 * g + l] = (uint16_t)(lanes[l] >> 16);
    }
}

/* float64: 4 lanes a vector, so the tile is done as two halves of 32 elements. Lane l of
 * group g tests bit 4g+l: the word's 64-bit lanes are shifted left by 63 - (4g + l), and
 * blendv_pd reads bit 63. */
static void tile_f64_half(double *p, const uint64_t *w, int64_t nseeds, const double *pos,
                          const double *neg, int second) {
    __m256i sh[8];
    for (int g = 0; g < 8; g++) {
        int b = 32 * second + 4 * g;
        sh[g] = _mm256_setr_epi64x(63 - b, 62 - b, 61 - b, 60 - b);
    }
    __m256d a[8];
    for (int g = 0; g < 8; g++) a[g] = _mm256_loadu_pd(p + 4 * g);
    for (int64_t s = 0; s < nseeds; s++) {
        const __m256d vp = _mm256_broadcast_sd(pos + s), vn = _mm256_broadcast_sd(neg + s);
        const __m256i word = _mm256_set1_epi64x((int64_t)w[s]);
        for (int g = 0; g < 8; g++)
            a[g] = _mm256_add_pd(a[g], _mm256_blendv_pd(vp, vn, _mm256_castsi256_pd(_mm256_sllv_epi64(word, sh[g]))));
    }
    for (int g = 0; g < 8; g++) _mm256_storeu_pd(p + 4 * g, a[g]);
}
#endif

/* ---- the work: tiles of every tensor, handed out to threads ----------------------------- */

typedef struct {
    int dtype;
    int64_t ntensors;
    void *const *ptrs;
    const int64_t *sizes;
    const uint64_t *name_keys;
    int64_t nseeds;
    const uint64_t *seeds;
    const uint64_t *cbits;
    const int64_t *item_start; /* prefix sums: items of tensor t are [item_start[t], item_start[t+1]) */
    int64_t nitems;
    int64_t next_item;         /* atomic */
} job;

static int64_t items_of(int64_t size) {
    int64_t tiles = (size + 63) / 64;
    return (tiles + TILES_PER_ITEM - 1) / TILES_PER_ITEM;
}

static void run_item(job *jb, int64_t t, int64_t item, uint64_t *keys, uint64_t *w, float *pos32,
                     float *neg32, double *pos64, double *neg64) {
    const int64_t size = jb->sizes[t], nseeds = jb->nseeds;
    const int esize = jb->dtype == FT_F64 ? 8 : (jb->dtype == FT_F32 ? 4 : 2);
    char *base = (char *)jb->ptrs[t];
    int64_t tile0 = item * TILES_PER_ITEM, tile1 = tile0 + TILES_PER_ITEM, ntiles = (size + 63) / 64;
    if (tile1 > ntiles) tile1 = ntiles;
    for (int64_t s0 = 0; s0 < nseeds; s0 += SEED_BATCH) {
        int64_t ns = nseeds - s0 < SEED_BATCH ? nseeds - s0 : SEED_BATCH;
        for (int64_t s = 0; s < ns; s++) {
            keys[s] = splitmix64(jb->seeds[s0 + s] ^ jb->name_keys[t]);
            uint64_t cb = jb->cbits[s0 + s];
            if (jb->dtype == FT_F32) {
                uint32_t p = (uint32_t)cb, n = p ^ 0x80000000u;
                memcpy(pos32 + s, &p, 4);
                memcpy(neg32 + s, &n, 4);
            } else if (jb->dtype == FT_F16) {
                pos32[s] = half_to_float((uint16_t)cb);
                neg32[s] = half_to_float((uint16_t)(cb ^ 0x8000u));
            } else if (jb->dtype == FT_BF16) {
                pos32[s] = bf16_to_float((uint16_t)cb);
                neg32[s] = bf16_to_float((uint16_t)(cb ^ 0x8000u));
            } else {
                uint64_t n = cb ^ 0x8000000000000000ULL;
                memcpy(pos64 + s, &cb, 8);
                memcpy(neg64 + s, &n, 8);
            }
        }
        for (int64_t tile = tile0; tile < tile1; tile++) {
            const uint64_t step = (uint64_t)(tile + 1) * GOLDEN;
            for (int64_t s = 0; s < ns; s++) w[s] = splitmix64(keys[s] + step);
            int64_t count = size - tile * 64 < 64 ? size - tile * 64 : 64;
            void *p = base + tile * 64 * esize;
#if FT_AVX2
            if (count == 64) {
                if (jb->dtype == FT_F32) tile_f32((float *)p, w, ns, pos32, neg32);
                else if (jb->dtype == FT_F16) tile_f16((uint16_t *)p, w, ns, pos32, neg32);
                else if (jb->dtype == FT_BF16) tile_bf16((uint16_t *)p, w, ns, pos32, neg32);
                else {
                    tile_f64_half((double *)p, w, ns, pos64, neg64, 0);
                    tile_f64_half((double *)p + 32, w, ns, pos64, neg64, 1);
                }
                continue;
            }
#endif
            tile_scalar(jb->dtype, p, count, w, ns, jb->cbits + s0);
        }
    }
}

static void *worker(void *arg) {
    job *jb = (job *)arg;
    uint64_t keys[SEED_BATCH], w[SEED_BATCH];
    float pos32[SEED_BATCH], neg32[SEED_BATCH];
    double pos64[SEED_BATCH], neg64[SEED_BATCH];
    int64_t t = 0;
    for (;;) {
        int64_t item = __atomic_fetch_add(&jb->next_item, 1, __ATOMIC_RELAXED);
        if (item >= jb->nitems) break;
        while (jb->item_start[t + 1] <= item) t++; /* items are taken in increasing order */
        run_item(jb, t, item - jb->item_start[t], keys, w, pos32, neg32, pos64, neg64);
    }
    return NULL;
}

/* The entry point. Returns 0 on success, a negative code on bad arguments or a failed
 * allocation (then nothing was done).
 *
 *   dtype:      0 float32, 1 float64, 2 float16, 3 bfloat16
 *   ptrs/sizes: ntensors contiguous arrays and their element counts
 *   name_keys:  splitmix64(fnv1a64(name)) per tensor
 *   seeds:      nseeds stream seeds, in the order their additions are made
 *   cbits:      nseeds coefficients, already rounded to dtype, as their bit patterns
 *   nthreads:   threads to use (the caller's included)
 */
int fedtune_replay(int dtype, int64_t ntensors, void *const *ptrs, const int64_t *sizes,
                   const uint64_t *name_keys, int64_t nseeds, const uint64_t *seeds,
                   const uint64_t *cbits, int nthreads) {
    if (dtype < 0 || dtype > 3 || ntensors < 0 || nseeds < 0) return -1;
    if (ntensors == 0 || nseeds == 0) return 0;
    int64_t *item_start = (int64_t *)malloc((size_t)(ntensors + 1) * sizeof(int64_t));
    if (!item_start) return -2;
    item_start[0] = 0;
    for (int64_t t = 0; t < ntensors; t++) {
        if (sizes[t] < 0) { free(item_start); return -1; }
        item_start[t + 1] = item_start[t] + items_of(sizes[t]);
    }
    job jb = {dtype, ntensors, ptrs, sizes, name_keys, nseeds, seeds, cbits, item_start,
              item_start[ntensors], 0};
    if (nthreads > jb.nitems) nthreads = (int)jb.nitems;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    pthread_t threads[256];
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        /* A thread that cannot start leaves its share to the others: the work is whole. */
        if (pthread_create(&threads[started], NULL, worker, &jb) != 0) break;
        started++;
    }
    worker(&jb);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    free(item_start);
    return 0;
}

/* Which code path this build compiled: 1 with AVX2 + F16C, 0 portable. */
int fedtune_replay_simd(void) { return FT_AVX2; }

/* ---- calibration: the floor bench/replay.py reports ------------------------------------ */

#include <time.h>

typedef struct {
    int64_t iters;
    float c;   /* read at run time, so the compiler cannot fold the additions */
    float out;
} probe;

#define PROBE_ACC 12
static void *add_probe(void *arg) {
    probe *pr = (probe *)arg;
    /* 12 independent accumulators of 8 floats: enough to cover the add latency on both add
     * pipes; a constant added over and over cannot be folded (the sums round), so this is
     * what it says: vector float32 additions, one after the other. */
#if FT_AVX2
    __m256 acc[PROBE_ACC];
    for (int i = 0; i < PROBE_ACC; i++) acc[i] = _mm256_set1_ps(pr->c * (float)i);
    const __m256 c = _mm256_set1_ps(pr->c);
    for (int64_t it = 0; it < pr->iters; it++) {
        for (int i = 0; i < PROBE_ACC; i++) acc[i] = _mm256_add_ps(acc[i], c);
    }
    float lanes[8], s = 0.0f;
    for (int i = 0; i < PROBE_ACC; i++) {
        _mm256_storeu_ps(lanes, acc[i]);
        for (int l = 0; l < 8; l++) s += lanes[l];
    }
#else
    float acc[8 * PROBE_ACC], s = 0.0f;
    for (int i = 0; i < 8 * PROBE_ACC; i++) acc[i] = pr->c * (float)i;
    for (int64_t it = 0; it < pr->iters; it++) {
        for (int i = 0; i < 8 * PROBE_ACC; i++) acc[i] += pr->c;
    }
    for (int i = 0; i < 8 * PROBE_ACC; i++) s += acc[i];
#endif
    pr->out = s;
    return NULL;
}

/* float32 additions per second this build issues on nthreads threads, registers only (no
 * loads, no stores, no sign expansion): the lower bound on any replay's time is the
 * number of element updates divided by this. */
double fedtune_add_rate(int64_t iters, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    pthread_t threads[256];
    probe probes[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        probes[i].iters = iters;
        probes[i].c = 1e-7f;
        if (pthread_create(&threads[started], NULL, add_probe, &probes[i]) != 0) break;
        started++;
    }
    probes[0].iters = iters;
    probes[0].c = 1e-7f;
    add_probe(&probes[0]);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    volatile float sink = 0.0f;
    for (int i = 0; i <= started; i++) sink += probes[i].out;
    (void)sink;
    return (double)iters * 8 * PROBE_ACC * (started + 1) / seconds;
}
