// Fused elementwise kernels of the PixelCNN++ on the CPU (see morphllr/model/fused.py).
//
// Each kernel makes one pass over channels-last (NHWC) activations, float32 or bfloat16, and
// does in registers what the eager path does in five to eight passes over memory:
//
//   concat_elu_pad      s = x + sum_i crop(y_i);  buf = zero-bordered [elu(s), elu(-s)] * dropout
//   concat_elu_pad_grad grad_s from grad_buf and buf (elu'(t) = 1 + min(elu(t), 0)), and each addend's
//                       gradient (grad_s inside its crop window, zero around it)
//   gate                out = a * sigmoid(b) (+ residual) for t = [a, b]
//   gate_grad           grad_t = [g s, g a s (1 - s)]
//
// Arithmetic is in float32 whatever the storage type; bfloat16 is rounded to nearest even once,
// on store.  exp is a Cephes-style polynomial (relative error ~2e-7, like expf), in AVX-512 or
// AVX2 intrinsics where the compiler targets them (-march=native) and in plain loops elsewhere.
// The tests also build the AVX-512 path with -DMORPHLLR_EMULATE_AVX512 (SIMDe's portable
// intrinsics), so that its arithmetic is checked on CPUs that cannot run it.
// Work is split over (image, row) with at::parallel_for, i.e. over torch's intra-op threads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(MORPHLLR_EMULATE_AVX512)
// Tests only (fused.avx512_emulation_cflags): the AVX-512 primitives below, run through SIMDe's
// portable versions of the intrinsics, so that a CPU without AVX-512 checks their arithmetic.
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define MORPHLLR_AVX512 1
#ifndef _mm512_cvtepi32_epi16  // not in SIMDe 0.8.2: vpmovdw, the low 16 bits of each 32-bit lane
inline simde__m256i morphllr_cvtepi32_epi16(simde__m512i a) {
  alignas(64) int32_t lanes[16];
  alignas(32) int16_t low[16];
  simde_mm512_store_si512(lanes, a);
  for (int i = 0; i < 16; ++i) low[i] = static_cast<int16_t>(lanes[i]);
  return simde_mm256_load_si256(reinterpret_cast<const simde__m256i*>(low));
}
#define _mm512_cvtepi32_epi16 morphllr_cvtepi32_epi16
#endif
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define MORPHLLR_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MORPHLLR_AVX2 1
#endif

namespace {

using at::Tensor;

inline float load(const float* p) { return *p; }
inline float load(const c10::BFloat16* p) {
  uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[0]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store(float* p, float v) { *p = v; }
inline void store(c10::BFloat16* p, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  reinterpret_cast<uint16_t*>(p)[0] = (v != v) ? uint16_t(0x7FC0) : uint16_t(rounded);
}

// exp(z) for z <= 0 (all the kernels need), clamped below at -87 where expf underflows.
inline float exp_nonpositive(float z) {
  z = z < -87.0f ? -87.0f : z;
  // round to nearest by the 1.5 * 2^23 trick (vectorises without -ffast-math, unlike nearbyint)
  const float n = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = z - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

// ------------------------------------------------------------------------------ dropout
// Whether element j (flat index into the (N, H, W, 2C) interior) is kept: the top byte of a
// murmur3 finaliser of (j, seed) against a threshold.  Forward and backward recompute the
// same mask from the seed, so nothing is stored and no random numbers are drawn in memory.
struct Dropout {
  uint32_t seed = 0;
  uint32_t threshold = 0;  // 0: no dropout; else drop probability threshold / 256
  float scale = 1.0f;      // 1 / keep probability
  bool on() const { return threshold > 0; }
};

inline uint32_t mix32(uint32_t j, uint32_t seed) {
  uint32_t h = j * 0x9E3779B9u ^ seed;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

inline float keep_scale(uint32_t j, const Dropout& d) { return (mix32(j, d.seed) >> 24) >= d.threshold ? d.scale : 0.0f; }

// ------------------------------------------------------------------------------ one pixel's channels
// The kernels below work one pixel at a time on its C contiguous channels.  The "run" functions
// are the arithmetic.  They are written once over the vector primitives of namespace simd
// (AVX-512: 16 lanes; AVX2 with FMA: 8 lanes), which cover the whole vectors of a pixel, and as
// plain loops for the channels left over (all of them on CPUs with neither).  Both forms compute
// the same float32 expressions.
inline float sigmoid(float b) {
  const float e = exp_nonpositive(-std::fabs(b));
  const float inv = 1.0f / (1.0f + e);
  return b >= 0.0f ? inv : e * inv;
}

#if defined(MORPHLLR_AVX512)
#define MORPHLLR_SIMD 1

namespace simd {
using vec = __m512;
using mask = __mmask16;
using ivec = __m512i;
constexpr int64_t width = 16;

inline vec set1(float v) { return _mm512_set1_ps(v); }
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
inline vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
inline vec fnmadd(vec a, vec b, vec c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
inline vec fmsub(vec a, vec b, vec c) { return _mm512_fmsub_ps(a, b, c); }    // a b - c
inline vec abs(vec v) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF))); }
inline mask greater(vec a, vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
inline mask greater_equal(vec a, vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
inline vec select(mask m, vec if_set, vec otherwise) { return _mm512_mask_blend_ps(m, otherwise, if_set); }
inline vec round_nearest(vec v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// scalef flushes p 2^n to 0 where 2^n underflows, so exp's argument needs no clamp
inline vec exp_domain(vec z) { return z; }
inline vec ldexp(vec p, vec n) { return _mm512_scalef_ps(p, n); }
inline vec reciprocal_estimate(vec d) { return _mm512_rcp14_ps(d); }  // relative error 2^-14

inline vec load(const float* p) { return _mm512_loadu_ps(p); }
inline vec load(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline void store(c10::BFloat16* p, vec v) {
#if defined(__AVX512BF16__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
#else  // round to nearest even, NaN to a quiet NaN, as the scalar store()
  __m512i b = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  b = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)), 16);
  b = _mm512_mask_mov_epi32(b, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(b));
#endif
}

inline ivec iota_from(uint32_t j0) {
  return _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j0)),
                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
inline ivec iset1(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline ivec imul(ivec a, ivec b) { return _mm512_mullo_epi32(a, b); }
inline ivec ixor(ivec a, ivec b) { return _mm512_xor_si512(a, b); }
template <int bits>
inline ivec ishift_right(ivec a) { return _mm512_srli_epi32(a, bits); }
// value where byte >= threshold, else 0 (byte in [0, 256))
inline vec keep_where(ivec byte, uint32_t threshold, float value) {
  return _mm512_maskz_mov_ps(_mm512_cmp_epu32_mask(byte, iset1(threshold), _MM_CMPINT_NLT), set1(value));
}
}  // namespace simd

#elif defined(MORPHLLR_AVX2)
#define MORPHLLR_SIMD 1

namespace simd {
using vec = __m256;
using mask = __m256;  // all-ones or all-zeros lanes
using ivec = __m256i;
constexpr int64_t width = 8;

inline vec set1(float v) { return _mm256_set1_ps(v); }
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
inline vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }    // a b + c
inline vec fnmadd(vec a, vec b, vec c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a b
inline vec fmsub(vec a, vec b, vec c) { return _mm256_fmsub_ps(a, b, c); }    // a b - c
inline vec abs(vec v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))); }
inline mask greater(vec a, vec b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
inline mask greater_equal(vec a, vec b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
inline vec select(mask m, vec if_set, vec otherwise) { return _mm256_blendv_ps(otherwise, if_set, m); }
inline vec round_nearest(vec v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// 2^n is built from its exponent bits below, which must stay a normal float: n >= -126
inline vec exp_domain(vec z) { return _mm256_max_ps(z, _mm256_set1_ps(-87.0f)); }
inline vec ldexp(vec p, vec n) {
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline vec reciprocal_estimate(vec d) { return _mm256_rcp_ps(d); }  // relative error 1.5 2^-12

inline vec load(const float* p) { return _mm256_loadu_ps(p); }
inline vec load(const c10::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline void store(c10::BFloat16* p, vec v) {  // round to nearest even, NaN to a quiet NaN, as the scalar store()
  __m256i b = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  b = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd)), 16);
  b = _mm256_blendv_epi8(b, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  // packus works within 128-bit halves: [b0..b3 b0..b3 | b4..b7 b4..b7]; gather 64-bit parts 0 and 2
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0b1000);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

inline ivec iota_from(uint32_t j0) {
  return _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline ivec iset1(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
inline ivec imul(ivec a, ivec b) { return _mm256_mullo_epi32(a, b); }
inline ivec ixor(ivec a, ivec b) { return _mm256_xor_si256(a, b); }
template <int bits>
inline ivec ishift_right(ivec a) { return _mm256_srli_epi32(a, bits); }
// value where byte >= threshold, else 0 (byte in [0, 256), threshold in [1, 256): a signed compare will do)
inline vec keep_where(ivec byte, uint32_t threshold, float value) {
  const __m256i kept = _mm256_cmpgt_epi32(byte, iset1(threshold - 1));
  return _mm256_and_ps(_mm256_castsi256_ps(kept), set1(value));
}
}  // namespace simd
#endif

#ifdef MORPHLLR_SIMD
// exp(z) for z <= 0.  Accurate: the polynomial of exp_nonpositive (float32 storage).  Short: a
// degree-4 Taylor polynomial, relative error < 5e-5, for bfloat16 storage (whose rounding is
// 2e-3): it saves 6 of 15 vector operations, and exp is most of these kernels' arithmetic.
template <bool accurate>
inline simd::vec vexp_nonpositive(simd::vec z) {
  z = simd::exp_domain(z);
  const simd::vec n = simd::round_nearest(simd::mul(z, simd::set1(1.44269504088896341f)));
  simd::vec r = simd::fnmadd(n, simd::set1(accurate ? 0.693359375f : 0.693147181f), z);
  simd::vec p;
  if constexpr (accurate) {
    r = simd::fmadd(n, simd::set1(2.12194440e-4f), r);
    p = simd::set1(1.9875691500e-4f);
    p = simd::fmadd(p, r, simd::set1(1.3981999507e-3f));
    p = simd::fmadd(p, r, simd::set1(8.3334519073e-3f));
    p = simd::fmadd(p, r, simd::set1(4.1665795894e-2f));
    p = simd::fmadd(p, r, simd::set1(1.6666665459e-1f));
    p = simd::fmadd(p, r, simd::set1(5.0000001201e-1f));
  } else {  // one-part ln 2: its rounding (|n| * 2e-8 in r) is far below bf16's
    p = simd::fmadd(r, simd::set1(1.0f / 24.0f), simd::set1(1.0f / 6.0f));
    p = simd::fmadd(p, r, simd::set1(0.5f));
  }
  p = simd::fmadd(simd::mul(p, r), r, simd::add(r, simd::set1(1.0f)));
  return simd::ldexp(p, n);
}

template <typename T>
constexpr bool accurate_exp = !std::is_same_v<T, c10::BFloat16>;

// 1 / d for d in [1, 2] without a division: the estimate alone (enough for bf16) or, when
// accurate, refined by one Newton step
template <bool accurate>
inline simd::vec vrecip(simd::vec d) {
  const simd::vec r = simd::reciprocal_estimate(d);
  if constexpr (!accurate) return r;
  return simd::mul(r, simd::fnmadd(d, r, simd::set1(2.0f)));
}

template <bool accurate>
inline simd::vec vsigmoid(simd::vec b) {
  const simd::vec e = vexp_nonpositive<accurate>(simd::sub(simd::set1(0.0f), simd::abs(b)));
  const simd::vec inv = vrecip<accurate>(simd::add(e, simd::set1(1.0f)));
  return simd::select(simd::greater_equal(b, simd::set1(0.0f)), inv, simd::mul(e, inv));
}

// keep_scale for elements j0 .. j0 + width - 1
inline simd::vec vkeep(uint32_t j0, const Dropout& d) {
  using simd::imul, simd::ixor, simd::iset1, simd::ishift_right;
  simd::ivec h = ixor(imul(simd::iota_from(j0), iset1(0x9E3779B9u)), iset1(d.seed));
  h = ixor(h, ishift_right<16>(h));
  h = imul(h, iset1(0x85EBCA6Bu));
  h = ixor(h, ishift_right<13>(h));
  h = imul(h, iset1(0xC2B2AE35u));
  h = ixor(h, ishift_right<16>(h));
  return simd::keep_where(ishift_right<24>(h), d.threshold, d.scale);
}
#endif

// pos, neg = [elu(s), elu(-s)] (* keep-scale) for s = x + sum_a adds[a], over c channels
template <typename T>
inline void elu_run(const T* x, const T* const* adds, int64_t n_add, const Dropout& d, uint32_t j, T* pos, T* neg,
                    int64_t c) {
  int64_t k = 0;
#ifdef MORPHLLR_SIMD
  const simd::vec zero = simd::set1(0.0f), one = simd::set1(1.0f);
  for (; k + simd::width <= c; k += simd::width) {
    simd::vec v = simd::load(x + k);
    for (int64_t a = 0; a < n_add; ++a) v = simd::add(v, simd::load(adds[a] + k));
    const simd::vec e = simd::sub(vexp_nonpositive<accurate_exp<T>>(simd::sub(zero, simd::abs(v))), one);
    const simd::mask positive = simd::greater(v, zero);
    simd::vec p = simd::select(positive, v, e), q = simd::select(positive, e, simd::sub(zero, v));
    if (d.on()) {
      p = simd::mul(p, vkeep(j + k, d));
      q = simd::mul(q, vkeep(j + c + k, d));
    }
    simd::store(pos + k, p);
    simd::store(neg + k, q);
  }
#endif
  for (; k < c; ++k) {
    float v = load(x + k);
    for (int64_t a = 0; a < n_add; ++a) v += load(adds[a] + k);
    const float e = exp_nonpositive(-std::fabs(v)) - 1.0f;
    float p = v > 0.0f ? v : e, q = v > 0.0f ? e : -v;
    if (d.on()) {
      p *= keep_scale(j + k, d);
      q *= keep_scale(j + c + k, d);
    }
    store(pos + k, p);
    store(neg + k, q);
  }
}

// out = g_pos * keep * elu'(pos) - g_neg * keep * elu'(neg), elu' = 1 + min(elu, 0), elu = buf / scale
// (written to each of outs[0 .. n_out - 1]: the gradient of x and of every addend is the same)
template <typename T, typename G>
inline void elu_grad_run(const G* g, const T* b, const Dropout& d, uint32_t j, G* const* outs, int64_t n_out,
                         int64_t c) {
  const float inv_scale = 1.0f / d.scale;
  int64_t k = 0;
#ifdef MORPHLLR_SIMD
  const simd::vec zero = simd::set1(0.0f), one = simd::set1(1.0f), vinv = simd::set1(inv_scale);
  for (; k + simd::width <= c; k += simd::width) {
    simd::vec gp = simd::load(g + k), gn = simd::load(g + c + k);
    simd::vec ep = simd::load(b + k), en = simd::load(b + c + k);
    if (d.on()) {
      gp = simd::mul(gp, vkeep(j + k, d));
      gn = simd::mul(gn, vkeep(j + c + k, d));
      ep = simd::mul(ep, vinv);
      en = simd::mul(en, vinv);
    }
    const simd::vec sp = simd::add(one, simd::min(ep, zero)), sn = simd::add(one, simd::min(en, zero));
    const simd::vec grad = simd::fmsub(gp, sp, simd::mul(gn, sn));
    for (int64_t o = 0; o < n_out; ++o) simd::store(outs[o] + k, grad);
  }
#endif
  for (; k < c; ++k) {
    float gp = load(g + k), gn = load(g + c + k), ep = load(b + k), en = load(b + c + k);
    if (d.on()) {
      gp *= keep_scale(j + k, d);
      gn *= keep_scale(j + c + k, d);
      ep *= inv_scale;
      en *= inv_scale;
    }
    const float grad = gp * (1.0f + (ep < 0.0f ? ep : 0.0f)) - gn * (1.0f + (en < 0.0f ? en : 0.0f));
    for (int64_t o = 0; o < n_out; ++o) store(outs[o] + k, grad);
  }
}

// out = a * sigmoid(b) (+ r) for t = [a, b]
template <typename T>
inline void gate_run(const T* t, const T* r, T* out, int64_t c) {
  int64_t k = 0;
#ifdef MORPHLLR_SIMD
  for (; k + simd::width <= c; k += simd::width) {
    simd::vec v = simd::mul(simd::load(t + k), vsigmoid<accurate_exp<T>>(simd::load(t + c + k)));
    if (r != nullptr) v = simd::add(v, simd::load(r + k));
    simd::store(out + k, v);
  }
#endif
  for (; k < c; ++k) {
    const float v = load(t + k) * sigmoid(load(t + c + k));
    store(out + k, r != nullptr ? v + load(r + k) : v);
  }
}

// [grad_a, grad_b] = [g s, g s (1 - s) a], s = sigmoid(b)
template <typename T, typename G>
inline void gate_grad_run(const G* g, const T* t, G* out, int64_t c) {
  int64_t k = 0;
#ifdef MORPHLLR_SIMD
  const simd::vec one = simd::set1(1.0f);
  for (; k + simd::width <= c; k += simd::width) {
    const simd::vec s = vsigmoid<accurate_exp<T>>(simd::load(t + c + k));
    const simd::vec ga = simd::mul(simd::load(g + k), s);
    simd::store(out + k, ga);
    simd::store(out + c + k, simd::mul(simd::mul(ga, simd::load(t + k)), simd::sub(one, s)));
  }
#endif
  for (; k < c; ++k) {
    const float s = sigmoid(load(t + c + k)), ga = load(g + k) * s;
    store(out + k, ga);
    store(out + c + k, ga * load(t + k) * (1.0f - s));
  }
}

struct Strides4 {  // element strides of an (N, C, H, W) tensor whose channels are innermost
  int64_t n, h, w;
  explicit Strides4(const Tensor& t) : n(t.stride(0)), h(t.stride(2)), w(t.stride(3)) {}
};

void check_channels_last(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (N, C, H, W), got ", t.dim(), "-D");
  TORCH_CHECK(t.stride(1) == 1 || t.size(1) == 1, name, " must have channels innermost (channels-last)");
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
}

Tensor empty_channels_last(const Tensor& like, int64_t c, int64_t h, int64_t w) {
  return at::empty({like.size(0), c, h, w}, like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// ------------------------------------------------------------------------------ concat-ELU
Dropout make_dropout(int64_t seed, int64_t threshold, double scale) {
  TORCH_CHECK(threshold >= 0 && threshold < 256, "dropout threshold must be in [0, 256), got ", threshold);
  Dropout d;
  d.seed = static_cast<uint32_t>(seed);
  d.threshold = static_cast<uint32_t>(threshold);
  d.scale = threshold > 0 ? static_cast<float>(scale) : 1.0f;
  return d;
}

template <typename T>
void concat_elu_pad_impl(const Tensor& x, const std::vector<Tensor>& addends, const std::vector<int64_t>& offsets,
                         const Dropout& d, Tensor& buf, int64_t top, int64_t left) {
  const int64_t n_img = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t hp = buf.size(2), wp = buf.size(3);
  const Strides4 sx(x), sb(buf);
  const T* xp = x.const_data_ptr<T>();
  T* bp = buf.data_ptr<T>();
  const int64_t n_add = static_cast<int64_t>(addends.size());
  std::vector<const T*> ap;
  std::vector<Strides4> sa;
  for (const auto& a : addends) {
    ap.push_back(a.const_data_ptr<T>());
    sa.emplace_back(a);
  }
  at::parallel_for(0, n_img * hp, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> add_at(n_add);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row / hp, r = row % hp, y = r - top;
      T* out_row = bp + i * sb.n + r * sb.h;
      if (y < 0 || y >= h) {
        for (int64_t q = 0; q < wp; ++q) std::memset(out_row + q * sb.w, 0, 2 * c * sizeof(T));
        continue;
      }
      for (int64_t q = 0; q < left; ++q) std::memset(out_row + q * sb.w, 0, 2 * c * sizeof(T));
      for (int64_t q = left + w; q < wp; ++q) std::memset(out_row + q * sb.w, 0, 2 * c * sizeof(T));
      for (int64_t q = 0; q < w; ++q) {
        for (int64_t a = 0; a < n_add; ++a)
          add_at[a] = ap[a] + i * sa[a].n + (y + offsets[2 * a]) * sa[a].h + (q + offsets[2 * a + 1]) * sa[a].w;
        T* pos = out_row + (q + left) * sb.w;
        const auto j = static_cast<uint32_t>(((i * h + y) * w + q) * 2 * c);
        elu_run(xp + i * sx.n + y * sx.h + q * sx.w, add_at.data(), n_add, d, j, pos, pos + c, c);
      }
    }
  });
}

Tensor concat_elu_pad(const Tensor& x, int64_t top, int64_t bottom, int64_t left, int64_t right,
                      at::TensorList addends, at::IntArrayRef offsets, int64_t seed, int64_t threshold,
                      double scale) {
  check_channels_last(x, "x");
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == 2 * static_cast<int64_t>(addends.size()),
              "offsets must hold (top, left) for every addend");
  std::vector<Tensor> adds;
  std::vector<int64_t> offs(offsets.begin(), offsets.end());
  for (size_t a = 0; a < addends.size(); ++a) {
    const Tensor& t = addends[a];
    check_channels_last(t, "addend");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "addends must have the dtype of x");
    TORCH_CHECK(t.size(0) == x.size(0) && t.size(1) == x.size(1) && offs[2 * a] >= 0 && offs[2 * a + 1] >= 0 &&
                    t.size(2) >= x.size(2) + offs[2 * a] && t.size(3) >= x.size(3) + offs[2 * a + 1],
                "addend ", a, " does not cover x at its offset");
    adds.push_back(t);
  }
  const Dropout d = make_dropout(seed, threshold, scale);
  const int64_t c = x.size(1);
  Tensor buf = empty_channels_last(x, 2 * c, x.size(2) + top + bottom, x.size(3) + left + right);
  if (x.scalar_type() == at::kFloat) {
    concat_elu_pad_impl<float>(x, adds, offs, d, buf, top, left);
  } else if (x.scalar_type() == at::kBFloat16) {
    concat_elu_pad_impl<c10::BFloat16>(x, adds, offs, d, buf, top, left);
  } else {
    TORCH_CHECK(false, "concat_elu_pad: float32 or bfloat16 expected, got ", x.scalar_type());
  }
  return buf;
}

template <typename T, typename G>
void concat_elu_pad_grad_impl(const Tensor& grad_buf, const Tensor& buf, const Dropout& d, std::vector<Tensor>& grads,
                              const std::vector<int64_t>& offsets, int64_t top, int64_t left) {
  const Tensor& grad_x = grads[0];
  const int64_t n_img = grad_x.size(0), c = grad_x.size(1), h = grad_x.size(2), w = grad_x.size(3);
  const int64_t n_out = static_cast<int64_t>(grads.size());
  const Strides4 sg(grad_buf), sb(buf);
  std::vector<Strides4> so;
  std::vector<G*> op;
  for (auto& t : grads) {
    so.emplace_back(t);
    op.push_back(t.data_ptr<G>());
  }
  const G* gp = grad_buf.const_data_ptr<G>();
  const T* bp = buf.const_data_ptr<T>();
  // an addend's gradient is x's inside its crop window and zero on the border around it
  for (int64_t a = 1; a < n_out; ++a) {
    const int64_t ha = grads[a].size(2), wa = grads[a].size(3), ot = offsets[2 * (a - 1)], ol = offsets[2 * (a - 1) + 1];
    at::parallel_for(0, n_img * ha, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row / ha, r = row % ha;
        G* base = op[a] + i * so[a].n + r * so[a].h;
        const bool inside = r >= ot && r < ot + h;
        for (int64_t q = 0; q < wa; ++q)
          if (!inside || q < ol || q >= ol + w) std::memset(base + q * so[a].w, 0, c * sizeof(G));
      }
    });
  }
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<G*> outs(n_out);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row / h, y = row % h;
      for (int64_t q = 0; q < w; ++q) {
        const auto j = static_cast<uint32_t>(((i * h + y) * w + q) * 2 * c);
        outs[0] = op[0] + i * so[0].n + y * so[0].h + q * so[0].w;
        for (int64_t a = 1; a < n_out; ++a)
          outs[a] = op[a] + i * so[a].n + (y + offsets[2 * (a - 1)]) * so[a].h + (q + offsets[2 * (a - 1) + 1]) * so[a].w;
        elu_grad_run(gp + i * sg.n + (y + top) * sg.h + (q + left) * sg.w,
                     bp + i * sb.n + (y + top) * sb.h + (q + left) * sb.w, d, j, outs.data(), n_out, c);
      }
    }
  });
}

std::vector<Tensor> concat_elu_pad_grad(const Tensor& grad_buf, const Tensor& buf, int64_t top, int64_t left,
                                        int64_t height, int64_t width, int64_t seed, int64_t threshold, double scale,
                                        at::IntArrayRef addend_sizes, at::IntArrayRef offsets) {
  check_channels_last(grad_buf, "grad_buf");
  check_channels_last(buf, "buf");
  TORCH_CHECK(grad_buf.sizes() == buf.sizes(), "grad_buf and buf must have the same shape");
  TORCH_CHECK(addend_sizes.size() == offsets.size(), "addend_sizes and offsets must both hold 2 numbers per addend");
  const Dropout d = make_dropout(seed, threshold, scale);
  const int64_t n = buf.size(0), c = buf.size(1) / 2;
  const auto options = grad_buf.options().memory_format(at::MemoryFormat::ChannelsLast);
  std::vector<Tensor> grads{at::empty({n, c, height, width}, options)};
  std::vector<int64_t> offs(offsets.begin(), offsets.end());
  for (size_t a = 0; 2 * a < addend_sizes.size(); ++a) {
    const int64_t ha = addend_sizes[2 * a], wa = addend_sizes[2 * a + 1];
    TORCH_CHECK(offs[2 * a] >= 0 && offs[2 * a + 1] >= 0 && ha >= height + offs[2 * a] && wa >= width + offs[2 * a + 1],
                "addend ", a, " does not cover x at its offset");
    grads.push_back(at::empty({n, c, ha, wa}, options));
  }
  const auto gt = grad_buf.scalar_type(), bt = buf.scalar_type();
  if (gt == at::kFloat && bt == at::kFloat) {
    concat_elu_pad_grad_impl<float, float>(grad_buf, buf, d, grads, offs, top, left);
  } else if (gt == at::kBFloat16 && bt == at::kBFloat16) {
    concat_elu_pad_grad_impl<c10::BFloat16, c10::BFloat16>(grad_buf, buf, d, grads, offs, top, left);
  } else if (gt == at::kFloat && bt == at::kBFloat16) {
    concat_elu_pad_grad_impl<c10::BFloat16, float>(grad_buf, buf, d, grads, offs, top, left);
  } else {
    TORCH_CHECK(false, "concat_elu_pad_grad: unsupported dtypes ", gt, " / ", bt);
  }
  return grads;
}

// ------------------------------------------------------------------------------ gate

template <typename T>
void gate_impl(const Tensor& t, const Tensor& residual, Tensor& out) {
  const int64_t n_img = out.size(0), c = out.size(1), h = out.size(2), w = out.size(3);
  const Strides4 st(t), so(out);
  const T* tp = t.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  const T* rp = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
  const Strides4 sr(residual.defined() ? residual : out);
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row / h, y = row % h;
      for (int64_t q = 0; q < w; ++q) {
        gate_run(tp + i * st.n + y * st.h + q * st.w, rp == nullptr ? nullptr : rp + i * sr.n + y * sr.h + q * sr.w,
                 op + i * so.n + y * so.h + q * so.w, c);
      }
    }
  });
}

Tensor gate(const Tensor& t, const std::optional<Tensor>& residual) {
  check_channels_last(t, "t");
  TORCH_CHECK(t.size(1) % 2 == 0, "gate: t needs an even number of channels");
  Tensor res;
  if (residual.has_value() && residual->defined()) {
    res = *residual;
    check_channels_last(res, "residual");
    TORCH_CHECK(res.scalar_type() == t.scalar_type() && res.size(0) == t.size(0) && res.size(1) * 2 == t.size(1) &&
                    res.size(2) == t.size(2) && res.size(3) == t.size(3),
                "gate: residual must be (N, C/2, H, W) in the dtype of t");
  }
  Tensor out = empty_channels_last(t, t.size(1) / 2, t.size(2), t.size(3));
  if (t.scalar_type() == at::kFloat) {
    gate_impl<float>(t, res, out);
  } else if (t.scalar_type() == at::kBFloat16) {
    gate_impl<c10::BFloat16>(t, res, out);
  } else {
    TORCH_CHECK(false, "gate: float32 or bfloat16 expected, got ", t.scalar_type());
  }
  return out;
}

template <typename T, typename G>
void gate_grad_impl(const Tensor& grad, const Tensor& t, Tensor& grad_t) {
  const int64_t n_img = grad.size(0), c = grad.size(1), h = grad.size(2), w = grad.size(3);
  const Strides4 sg(grad), st(t), so(grad_t);
  const G* gp = grad.const_data_ptr<G>();
  const T* tp = t.const_data_ptr<T>();
  G* op = grad_t.data_ptr<G>();
  at::parallel_for(0, n_img * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row / h, y = row % h;
      for (int64_t q = 0; q < w; ++q) {
        gate_grad_run(gp + i * sg.n + y * sg.h + q * sg.w, tp + i * st.n + y * st.h + q * st.w,
                      op + i * so.n + y * so.h + q * so.w, c);
      }
    }
  });
}

Tensor gate_grad(const Tensor& grad, const Tensor& t) {
  check_channels_last(grad, "grad");
  check_channels_last(t, "t");
  TORCH_CHECK(grad.size(0) == t.size(0) && grad.size(1) * 2 == t.size(1) && grad.size(2) == t.size(2) &&
                  grad.size(3) == t.size(3),
              "gate_grad: grad must be (N, C/2, H, W) for t of (N, C, H, W)");
  Tensor grad_t = empty_channels_last(grad, t.size(1), t.size(2), t.size(3));
  const auto gt = grad.scalar_type(), tt = t.scalar_type();
  if (gt == at::kFloat && tt == at::kFloat) {
    gate_grad_impl<float, float>(grad, t, grad_t);
  } else if (gt == at::kBFloat16 && tt == at::kBFloat16) {
    gate_grad_impl<c10::BFloat16, c10::BFloat16>(grad, t, grad_t);
  } else if (gt == at::kFloat && tt == at::kBFloat16) {
    gate_grad_impl<c10::BFloat16, float>(grad, t, grad_t);
  } else {
    TORCH_CHECK(false, "gate_grad: unsupported dtypes ", gt, " / ", tt);
  }
  return grad_t;
}

}  // namespace

// The op namespace; the tests build the portable (non-AVX-512) variant under another name.
#ifndef MORPHLLR_OPS
#define MORPHLLR_OPS morphllr_fused
#endif
// one level of indirection so that MORPHLLR_OPS is expanded before TORCH_LIBRARY pastes it
#define MORPHLLR_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define MORPHLLR_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

MORPHLLR_LIBRARY(MORPHLLR_OPS, m) {
  m.def("concat_elu_pad(Tensor x, int top, int bottom, int left, int right, Tensor[] addends, int[] offsets, "
        "int seed, int threshold, float scale) -> Tensor");
  m.def("concat_elu_pad_grad(Tensor grad_buf, Tensor buf, int top, int left, int height, int width, "
        "int seed, int threshold, float scale, int[] addend_sizes, int[] offsets) -> Tensor[]");
  m.def("gate(Tensor t, Tensor? residual) -> Tensor");
  m.def("gate_grad(Tensor grad, Tensor t) -> Tensor");
}

MORPHLLR_LIBRARY_IMPL(MORPHLLR_OPS, CPU, m) {
  m.impl("concat_elu_pad", &concat_elu_pad);
  m.impl("concat_elu_pad_grad", &concat_elu_pad_grad);
  m.impl("gate", &gate);
  m.impl("gate_grad", &gate_grad);
}
