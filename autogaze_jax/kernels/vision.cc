// Fused CPU kernels for the gaze model's vision encoder (models/vision_encoder.py), as XLA FFI calls:
//   AutogazeStem: the per-frame patchify-linear + LayerNorm, read straight from (B, T, 3, S, S) pixels;
//   AutogazeCausalConv: the trunk's 3-D conv (+ bias, ReLU) over time-padded features.
//
// Why: XLA runs the trunk conv through Eigen's generic volume-patch convolution and the stem as a
// transpose into a fresh 10 MB buffer (page faults) + a matmul, together ~60 ms of a ~280 ms clip
// rollout on this CPU at ~120 GFLOP/s; here both are register-blocked matmuls whose weights stay in
// L2 while every output row of a frame goes past them, shared by the cores frame by frame.
// Equal to the XLA ops up to float rounding (the sums run in another order).
#include <vector>

#include "simd.h"

namespace autogaze {
namespace {

// C (R x N) (+)= A (R x K) @ W (K x N), N a multiple of 32: R x 32 accumulators stay in registers
// while a 32-column panel of W streams past (broadcast-FMA).
template <int R, bool kAccumulate>
void gemm(const float* A, int64_t K, const float* W, int64_t N, float* C) {
  for (int64_t j0 = 0; j0 < N; j0 += 2 * kLanes) {
    vf c[R][2];
    for (int r = 0; r < R; ++r) {
      c[r][0] = kAccumulate ? load(C + r * N + j0) : vf{};
      c[r][1] = kAccumulate ? load(C + r * N + j0 + kLanes) : vf{};
    }
    const float* w = W + j0;
    for (int64_t k = 0; k < K; ++k, w += N) {
      const vf w0 = load(w), w1 = load(w + kLanes);
      for (int r = 0; r < R; ++r) {
        const float a = A[r * K + k];
        c[r][0] += a * w0;
        c[r][1] += a * w1;
      }
    }
    for (int r = 0; r < R; ++r) {
      store(C + r * N + j0, c[r][0]);
      store(C + r * N + j0 + kLanes, c[r][1]);
    }
  }
}

constexpr int kRows = 12;  // rows per block: 12 x 2 accumulators + 2 weight vectors fit 32 registers

// ---- stem ----

struct Stem {
  const float *pixels, *w, *bias, *scale, *shift;  // w (3 k k, D) rows in (c, ky, kx) order
  float* out;                                       // (B, T, g, g, D)
  int64_t frames, size, k, g, d;                    // frames = B * T
  float eps;
};

// Patches [x0, x0 + rows) of patch row gy of frame f (rows <= R): gather, matmul, bias, LayerNorm.
template <int R>
void stem_block(const Stem& s, int64_t f, int64_t gy, int64_t x0, int rows) {
  const int64_t k = s.k, kk = 3 * k * k, d = s.d;
  thread_local std::vector<float> buf;
  buf.assign(R * (kk + d), 0.0f);
  float *a = buf.data(), *y = a + R * kk;
  for (int r = 0; r < rows; ++r)
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t ky = 0; ky < k; ++ky) {
        const float* src = s.pixels + ((f * 3 + c) * s.size + gy * k + ky) * s.size + (x0 + r) * k;
        std::copy(src, src + k, a + r * kk + (c * k + ky) * k);
      }
  gemm<R, false>(a, kk, s.w, d, y);
  const float inv_d = 1.0f / static_cast<float>(d);
  for (int r = 0; r < rows; ++r) {  // torch LayerNorm: biased variance, statistics in float32
    float* yr = y + r * d;
    vf sum = {};
    for (int64_t c = 0; c < d; c += kLanes) {
      store(yr + c, load(yr + c) + load(s.bias + c));
      sum += load(yr + c);
    }
    float mu = 0.0f;
    for (int l = 0; l < kLanes; ++l) mu += sum[l];
    mu *= inv_d;
    vf sq = {};
    for (int64_t c = 0; c < d; c += kLanes) {
      const vf z = load(yr + c) - mu;
      sq += z * z;
    }
    float var = 0.0f;
    for (int l = 0; l < kLanes; ++l) var += sq[l];
    const float inv = 1.0f / std::sqrt(var * inv_d + s.eps);
    float* o = s.out + ((f * s.g + gy) * s.g + x0 + r) * d;
    for (int64_t c = 0; c < d; c += kLanes)
      store(o + c, (load(yr + c) - mu) * inv * load(s.scale + c) + load(s.shift + c));
  }
}

template <int R>
void stem_all(const Stem& s, int64_t per, ffi::ThreadPool& pool) {
  const int64_t nblocks = (s.g + per - 1) / per;  // per frame row
  parallel_for(pool, s.frames * s.g * nblocks, [&](int64_t it) {
    const int64_t f = it / (s.g * nblocks), gy = it / nblocks % s.g, x0 = it % nblocks * per;
    stem_block<R>(s, f, gy, x0, static_cast<int>(std::min<int64_t>(per, s.g - x0)));
  });
}

ffi::Error StemImpl(ffi::Buffer<ffi::F32> pixels, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> out,
                    float eps, ffi::ThreadPool pool) {
  const auto pd = pixels.dimensions(), wd = w.dimensions(), od = out->dimensions();
  if (pd.size() != 5 || wd.size() != 2 || od.size() != 5 || pd[2] != 3 || pd[3] != pd[4])
    return ffi::Error::InvalidArgument("stem: pixels must be (B, T, 3, S, S), w (3 k k, D)");
  const int64_t g = od[2], d = wd[1], size = pd[3], k = size / g;
  if (g * k != size || wd[0] != 3 * k * k || od[0] != pd[0] || od[1] != pd[1] || od[3] != g || od[4] != d ||
      d % (2 * kLanes) || bias.element_count() != d || scale.element_count() != d || shift.element_count() != d)
    return ffi::Error::InvalidArgument("stem: inconsistent shapes");
  const Stem s{pixels.typed_data(), w.typed_data(), bias.typed_data(), scale.typed_data(), shift.typed_data(),
               out->typed_data(), pd[0] * pd[1], size, k, g, d, eps};
  // equal blocks of at most kRows patches per patch row (14 -> 7 + 7)
  const int64_t per = (g + (g + kRows - 1) / kRows - 1) / ((g + kRows - 1) / kRows);
  switch (per) {
#define AUTOGAZE_CASE(R) case R: stem_all<R>(s, per, pool); break;
    AUTOGAZE_CASE(1) AUTOGAZE_CASE(2) AUTOGAZE_CASE(3) AUTOGAZE_CASE(4) AUTOGAZE_CASE(5) AUTOGAZE_CASE(6)
    AUTOGAZE_CASE(7) AUTOGAZE_CASE(8) AUTOGAZE_CASE(9) AUTOGAZE_CASE(10) AUTOGAZE_CASE(11)
#undef AUTOGAZE_CASE
    default: stem_all<kRows>(s, per, pool); break;
  }
  return ffi::Error::Success();
}

// ---- causal trunk conv ----

struct Conv {
  const float *x, *w, *bias;  // x (B, T + kt - 1, g, g, C) time-padded; w (kt, ks, ks, C, O)
  float* out;                 // (B, T, g, g, O)
  int64_t B, T, kt, ks, g, c, o;
};

// One output frame: for each tap, every output row passes the tap's (C, O) weights (kept in L2) in
// blocks of kRows rows gathered from the shifted input (zeros outside the frame); the frame's
// accumulators (g g x O, padded to whole blocks: the last block's extra rows only ever add zeros)
// stay in L2 too. Then bias + ReLU.
void conv_frame(const Conv& p, int64_t b, int64_t t) {
  const int64_t g = p.g, C = p.c, O = p.o, pad = (p.ks - 1) / 2, rows = g * g;
  thread_local std::vector<float> acc, a;
  acc.assign(round_up(rows, kRows) * O, 0.0f);
  a.resize(kRows * C);
  for (int64_t dt = 0; dt < p.kt; ++dt) {
    const float* frame = p.x + (b * (p.T + p.kt - 1) + t + dt) * rows * C;
    for (int64_t dy = 0; dy < p.ks; ++dy)
      for (int64_t dx = 0; dx < p.ks; ++dx) {
        const float* w = p.w + ((dt * p.ks + dy) * p.ks + dx) * C * O;
        for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
          const int n = static_cast<int>(std::min<int64_t>(kRows, rows - r0));
          for (int r = 0; r < kRows; ++r) {
            const int64_t pos = r0 + r, y = pos / g + dy - pad, x = pos % g + dx - pad;
            float* dst = a.data() + r * C;
            if (r < n && y >= 0 && y < g && x >= 0 && x < g)
              std::copy(frame + (y * g + x) * C, frame + (y * g + x + 1) * C, dst);
            else
              std::fill(dst, dst + C, 0.0f);
          }
          gemm<kRows, true>(a.data(), C, w, O, acc.data() + r0 * O);
        }
      }
  }
  float* out = p.out + (b * p.T + t) * rows * O;
  for (int64_t i = 0; i < rows * O; i += kLanes) {
    const vf v = load(acc.data() + i) + load(p.bias + i % O);
    store(out + i, v > 0.0f ? v : vf{});
  }
}

ffi::Error ConvImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                    ffi::ResultBuffer<ffi::F32> out, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), wd = w.dimensions(), od = out->dimensions();
  if (xd.size() != 5 || wd.size() != 5 || od.size() != 5)
    return ffi::Error::InvalidArgument("causal_conv: bad ranks");
  const Conv p{x.typed_data(), w.typed_data(), bias.typed_data(), out->typed_data(),
               od[0], od[1], wd[0], wd[1], od[2], xd[4], wd[4]};
  if (xd[0] != p.B || xd[1] != p.T + p.kt - 1 || xd[2] != p.g || xd[3] != p.g || od[3] != p.g || od[4] != p.o ||
      wd[2] != p.ks || wd[3] != p.c || p.ks % 2 == 0 || p.o % (2 * kLanes) || bias.element_count() != p.o)
    return ffi::Error::InvalidArgument("causal_conv: inconsistent shapes");
  parallel_for(pool, p.B * p.T, [&](int64_t it) { conv_frame(p, it / p.T, it % p.T); });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace autogaze

namespace ffi = xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutogazeStem, autogaze::StemImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pixels
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // LayerNorm scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // LayerNorm bias
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutogazeCausalConv, autogaze::ConvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // time-padded features
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());
