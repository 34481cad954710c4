// Fused CPU kernel for one decoder layer of the rollout (gaze_decoder.GazeDecoder.hidden_cached), as
// one XLA FFI custom call: RMSNorm, q/k/v projections, RoPE, the cache write, the cached attention of
// attention.h, o_proj + residual, RMSNorm, SiLU-gated MLP + residual.
//
// Why: at the rollout's sizes (~200 rows x 192 features per frame, 10 rows per decode step) XLA runs
// each linear as its own small matmul at about half the matmul peak and the norms, RoPE, SiLU and
// residuals as separate passes over memory; here a block of up to 12 rows goes through all of them
// while it sits in L1/L2 and both cores share the blocks.
//
// Semantics (equal to the XLA composition up to float rounding): x (B, n, d) hidden states of the n
// new tokens, written at cache slots [start, start + n); cos/sin (B, n, hd) their RoPE angles (HF
// rotate-half layout); weights as Flax kernels (in, out). Every token's rotated key and value go
// into layer `layer` of the caches (ck (layers, B, H, hd, S) keys transposed, cv (layers, B, H, S,
// hd), updated in place: outputs alias inputs); only the last nq tokens run query, attention, o_proj
// and MLP (the rollout's last layer reads out one token) -> out (B, nq, d).
// Phases: A (row blocks) norm + projections + RoPE + cache write; B (sample, head) attention;
// C (row blocks) o_proj + residual + norm + MLP + residual. Each phase ends in a barrier.
#include <vector>

#include "attention.h"

namespace autogaze {
namespace {

constexpr int kMaxRows = 12;  // gemm rows per block: R x 2 accumulators + 2 weight vectors fit 32 registers

struct Layer {
  const float *x, *cos, *sin, *ln1, *wq, *wk, *wv, *wo, *ln2, *wg, *wu, *wd;
  float *ck, *cv;
  const bool* valid;
  float *q, *attn, *out;  // q, attention output (B, nq, d) scratch; out (B, nq, d)
  int64_t B, n, nq, d, f, H, hd, S, layer, start;
  float eps;
};

// HF LlamaRMSNorm of R rows (d % 16 == 0): h = scale * (x * rsqrt(mean(x^2) + eps)).
template <int R>
void rms_norm(const float* x, int64_t d, const float* scale, float eps, float* h) {
  for (int r = 0; r < R; ++r) {
    const float* xr = x + r * d;
    vf acc = {};
    for (int64_t c = 0; c < d; c += kLanes) acc += load(xr + c) * load(xr + c);
    float ss = 0.0f;
    for (int l = 0; l < kLanes; ++l) ss += acc[l];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t c = 0; c < d; c += kLanes) store(h + r * d + c, load(scale + c) * (load(xr + c) * inv));
  }
}

// Rotate-half RoPE of one row's heads in place: x * cos + concat(-x2, x1) * sin.
void rope(float* row, const float* cos, const float* sin, int64_t H, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < H; ++h) {
    float* x = row + h * hd;
    for (int64_t c = 0; c < half; ++c) {
      const float x1 = x[c], x2 = x[c + half];
      x[c] = x1 * cos[c] + -x2 * sin[c];
      x[c + half] = x2 * cos[c + half] + x1 * sin[c + half];
    }
  }
}

// Phase A for rows [r0, r0 + rows) of sample b (rows <= R).
template <int R>
void project(const Layer& L, int64_t b, int64_t r0, int rows) {
  const int64_t d = L.d, hd = L.hd;
  thread_local std::vector<float> buf;
  buf.assign(3 * R * d, 0.0f);  // rows past `rows` stay zero (finite, never stored)
  float *xin = buf.data(), *h = xin + R * d, *t = h + R * d;
  std::copy(L.x + (b * L.n + r0) * d, L.x + (b * L.n + r0 + rows) * d, xin);
  rms_norm<R>(xin, d, L.ln1, L.eps, h);
  const float* cos = L.cos + (b * L.n + r0) * hd;
  const float* sin = L.sin + (b * L.n + r0) * hd;
  const size_t item0 = (static_cast<size_t>(L.layer) * L.B + b) * L.H;
  const int64_t slot0 = L.start + r0;

  gemm<R, false>(h, d, L.wk, d, t);
  for (int r = 0; r < rows; ++r) rope(t + r * d, cos + r * hd, sin + r * hd, L.H, hd);
  for (int64_t hh = 0; hh < L.H; ++hh) {
    float* KT = L.ck + (item0 + hh) * L.S * hd;  // (hd, S)
    for (int64_t c = 0; c < hd; ++c)
      for (int r = 0; r < rows; ++r) KT[c * L.S + slot0 + r] = t[r * d + hh * hd + c];
  }
  gemm<R, false>(h, d, L.wv, d, t);
  for (int64_t hh = 0; hh < L.H; ++hh) {
    float* V = L.cv + (item0 + hh) * L.S * hd;  // (S, hd)
    for (int r = 0; r < rows; ++r) std::copy(t + r * d + hh * hd, t + r * d + (hh + 1) * hd, V + (slot0 + r) * hd);
  }
  const int64_t q0 = L.n - L.nq;  // first querying row
  if (r0 + rows <= q0) return;
  gemm<R, false>(h, d, L.wq, d, t);
  for (int r = 0; r < rows; ++r) {
    if (r0 + r < q0) continue;
    rope(t + r * d, cos + r * hd, sin + r * hd, L.H, hd);
    std::copy(t + r * d, t + (r + 1) * d, L.q + (b * L.nq + r0 + r - q0) * d);
  }
}

// Phase C for querying rows [r0, r0 + rows) of sample b (rows <= R).
template <int R>
void finish(const Layer& L, int64_t b, int64_t r0, int rows) {
  const int64_t d = L.d, f = L.f;
  thread_local std::vector<float> buf;
  buf.assign(R * (4 * d + 3 * f), 0.0f);
  float *a = buf.data(), *xr = a + R * d, *h = xr + R * d, *t = h + R * d, *g = t + R * d, *u = g + R * f,
        *m = u + R * f;
  std::copy(L.attn + (b * L.nq + r0) * d, L.attn + (b * L.nq + r0 + rows) * d, a);
  const float* x = L.x + (b * L.n + L.n - L.nq + r0) * d;
  gemm<R, false>(a, d, L.wo, d, t);
  for (int64_t i = 0; i < rows * d; i += kLanes) store(xr + i, load(x + i) + load(t + i));
  rms_norm<R>(xr, d, L.ln2, L.eps, h);
  gemm<R, false>(h, d, L.wg, f, g);
  gemm<R, false>(h, d, L.wu, f, u);
  for (int64_t i = 0; i < R * f; i += kLanes) {  // silu(g) * u, silu(g) = g * sigmoid(g)
    const vf gi = load(g + i);
    store(m + i, gi * (1.0f / (1.0f + vexp(-gi))) * load(u + i));
  }
  gemm<R, false>(m, f, L.wd, d, t);
  float* out = L.out + (b * L.nq + r0) * d;
  for (int64_t i = 0; i < rows * d; i += kLanes) store(out + i, load(xr + i) + load(t + i));
}

// Splits n rows of each sample into equal blocks of at most kMaxRows (a 10-token step is one block
// of 10, not 8 + 2) and runs phase(L, b, r0, rows) over all (sample, block) pairs with R = block size.
template <template <int> class Phase>
void over_row_blocks(const Layer& L, int64_t n, ffi::ThreadPool& pool) {
  const int64_t nblocks = (n + kMaxRows - 1) / kMaxRows, per = (n + nblocks - 1) / nblocks;
  auto run = [&](auto fn) {
    parallel_for(pool, L.B * nblocks, [&](int64_t it) {
      const int64_t b = it / nblocks, r0 = (it % nblocks) * per;
      fn(b, r0, static_cast<int>(std::min<int64_t>(per, n - r0)));
    });
  };
  switch (per) {
#define AUTOGAZE_ROWS(R) \
  case R: run([&](int64_t b, int64_t r0, int rows) { Phase<R>::run(L, b, r0, rows); }); break;
    AUTOGAZE_ROWS(1) AUTOGAZE_ROWS(2) AUTOGAZE_ROWS(3) AUTOGAZE_ROWS(4) AUTOGAZE_ROWS(5) AUTOGAZE_ROWS(6)
    AUTOGAZE_ROWS(7) AUTOGAZE_ROWS(8) AUTOGAZE_ROWS(9) AUTOGAZE_ROWS(10) AUTOGAZE_ROWS(11)
    default: run([&](int64_t b, int64_t r0, int rows) { Phase<kMaxRows>::run(L, b, r0, rows); }); break;
#undef AUTOGAZE_ROWS
  }
}

template <int R>
struct Project {
  static void run(const Layer& L, int64_t b, int64_t r0, int rows) { project<R>(L, b, r0, rows); }
};
template <int R>
struct Finish {
  static void run(const Layer& L, int64_t b, int64_t r0, int rows) { finish<R>(L, b, r0, rows); }
};

ffi::Error Impl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                ffi::Buffer<ffi::F32> ln1, ffi::Buffer<ffi::F32> wq, ffi::Buffer<ffi::F32> wk,
                ffi::Buffer<ffi::F32> wv, ffi::Buffer<ffi::F32> wo, ffi::Buffer<ffi::F32> ln2,
                ffi::Buffer<ffi::F32> wg, ffi::Buffer<ffi::F32> wu, ffi::Buffer<ffi::F32> wd,
                ffi::Buffer<ffi::F32> ck, ffi::Buffer<ffi::F32> cv, ffi::Buffer<ffi::PRED> valid,
                ffi::Buffer<ffi::S32> start, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> ck_out,
                ffi::ResultBuffer<ffi::F32> cv_out, int64_t layer, int64_t nq, float eps, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), kd = ck.dimensions(), vd = cv.dimensions(), gd = wg.dimensions();
  if (xd.size() != 3 || kd.size() != 5 || vd.size() != 5 || gd.size() != 2)
    return ffi::Error::InvalidArgument("decoder_layer: bad ranks");
  const int64_t B = xd[0], n = xd[1], d = xd[2], H = kd[2], hd = kd[3], S = kd[4], f = gd[1];
  const int64_t w0 = static_cast<int64_t>(*start.typed_data());
  auto is = [](auto dims, std::initializer_list<int64_t> want) {
    return dims.size() == want.size() && std::equal(dims.begin(), dims.end(), want.begin());
  };
  if (!is(cos.dimensions(), {B, n, hd}) || !is(sin.dimensions(), {B, n, hd}) || !is(ln1.dimensions(), {d}) ||
      !is(ln2.dimensions(), {d}) || !is(wq.dimensions(), {d, d}) || !is(wk.dimensions(), {d, d}) ||
      !is(wv.dimensions(), {d, d}) || !is(wo.dimensions(), {d, d}) || !is(gd, {d, f}) ||
      !is(wu.dimensions(), {d, f}) || !is(wd.dimensions(), {f, d}) || kd[1] != B || H * hd != d ||
      !is(vd, {kd[0], B, H, S, hd}) || !is(valid.dimensions(), {B, S}) || !is(out->dimensions(), {B, nq, d}))
    return ffi::Error::InvalidArgument("decoder_layer: inconsistent shapes");
  if (!supported_head_dim(hd) || d % (2 * kLanes) || f % (2 * kLanes) || S % kTile || layer < 0 || layer >= kd[0] ||
      nq < 1 || nq > n || w0 < 0 || w0 + n > S)
    return ffi::Error::InvalidArgument("decoder_layer: unsupported sizes or slots");
  in_place(ck, ck_out->typed_data());
  in_place(cv, cv_out->typed_data());
  std::vector<float> q(B * nq * d), attn(B * nq * d);
  const Layer L{x.typed_data(),  cos.typed_data(), sin.typed_data(), ln1.typed_data(), wq.typed_data(),
                wk.typed_data(), wv.typed_data(),  wo.typed_data(),  ln2.typed_data(), wg.typed_data(),
                wu.typed_data(), wd.typed_data(),  ck_out->typed_data(), cv_out->typed_data(), valid.typed_data(),
                q.data(), attn.data(), out->typed_data(), B, n, nq, d, f, H, hd, S, layer, w0, eps};
  over_row_blocks<Project>(L, n, pool);
  const Problem p{L.q, nullptr, nullptr, L.ck, L.cv, L.valid, L.attn, B, nq, H, S, layer, w0 + n - nq, n};
  attend_any(p, hd, pool, /*write_cache=*/false);
  over_row_blocks<Finish>(L, nq, pool);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace autogaze

namespace ffi = xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutogazeDecoderLayer, autogaze::Impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cos
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sin
                                  .Arg<ffi::Buffer<ffi::F32>>()  // input_layernorm
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q_proj
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_proj
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v_proj
                                  .Arg<ffi::Buffer<ffi::F32>>()  // o_proj
                                  .Arg<ffi::Buffer<ffi::F32>>()  // post_attention_layernorm
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gate_proj
                                  .Arg<ffi::Buffer<ffi::F32>>()  // up_proj
                                  .Arg<ffi::Buffer<ffi::F32>>()  // down_proj
                                  .Arg<ffi::Buffer<ffi::F32>>()  // key cache
                                  .Arg<ffi::Buffer<ffi::F32>>()  // value cache
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("nq")
                                  .Attr<float>("eps")
                                  .Ctx<ffi::ThreadPool>());
