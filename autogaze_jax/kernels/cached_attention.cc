// Fused CPU kernel for the rollout's cached attention (autogaze_jax/models/layers.py cached_attention),
// as one XLA FFI custom call.
//
// Why: on CPU the rollout spends much of its time in attention of a few new tokens over the KV cache
// (head dim 32). XLA runs it as separate small ops (scores, mask, max, exp, sum, PV) that write every
// score to memory and mostly use one core. Here each (sample, head) pair is one work item (shared by
// the cores, simd.h), and a block of query rows keeps its scores in L1/L2: QK^T as broadcast-FMAs over
// 32 keys at a time (the key cache is stored transposed, so that loop reads it contiguously), an exact
// softmax over the visible keys (max, exp, sum, as the official eager attention), then P @ V.
//
// Semantics (equal to layers.cached_attention's XLA path up to float rounding): the n new tokens' keys
// and values k, v (B, n, H, d) are first written into layer `layer` of the caches at slots
// [start, start + n) (ck (layers, B, H, d, S) keys transposed, cv (layers, B, H, S, d), S a multiple
// of 32; the caches are updated in place: outputs alias inputs), then the queries q (B, nq, H, d),
// unscaled, = the last nq new tokens attend: query row i sits at slot start + n - nq + i and sees key
// j iff j <= its slot and valid[b, j]. A row that sees no key returns zeros (the rollout never uses
// such a row). Writing the cache here rather than in XLA saves a strided, unvectorised
// dynamic-update-slice loop per layer.
#include <vector>

#include "simd.h"

namespace autogaze {
namespace {

constexpr int kTile = 2 * kLanes;  // keys per QK^T register tile

struct Problem {
  const float *q, *kn, *vn;
  float *ck, *cv;
  const bool* valid;
  float* out;
  int64_t B, n, H, S, layer, start, nw;  // n query rows; nw written tokens from slot start - (nw - n)
};

// Rows [r0, r0 + rows) of item (b, h), rows <= R. `s` holds R score rows of `stride` floats, `bias`
// the item's additive key mask (0 visible, -inf invalid or unwritten).
template <int D, int R>
void block(const Problem& p, int64_t b, int64_t h, int64_t r0, int rows, int64_t last, int64_t stride,
           const float* bias, float* s) {
  const size_t item = (static_cast<size_t>(p.layer) * p.B + b) * p.H + h;
  const float* KT = p.ck + item * p.S * D;  // (D, S)
  const float* V = p.cv + item * p.S * D;   // (S, D)
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  float qs[R][D];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < D; ++c) qs[r][c] = r < rows ? p.q[((b * p.n + r0 + r) * p.H + h) * D + c] * scale : 0.0f;
  const int64_t keys = std::min<int64_t>(p.start + r0 + rows, last);  // up to the last row's own slot
  const int64_t kpad = round_up(keys, kTile);                          // <= S (S % kTile == 0)

  // scores = q K^T, stored masked (bias: invalid keys; lane test: keys after the row's own slot)
  // with each row's running max
  vi lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = l;
  int32_t lim[R];
  vf vmax[R];
  for (int r = 0; r < R; ++r) {
    lim[r] = r < rows ? static_cast<int32_t>(std::min<int64_t>(p.start + r0 + r + 1, last)) : 0;
    vmax[r] = splat(-INFINITY);
  }
  for (int64_t j0 = 0; j0 < kpad; j0 += kTile) {
    vf acc[R][2] = {};
    for (int c = 0; c < D; ++c) {
      const vf k0 = load(KT + c * p.S + j0), k1 = load(KT + c * p.S + j0 + kLanes);
      for (int r = 0; r < R; ++r) {
        acc[r][0] += qs[r][c] * k0;
        acc[r][1] += qs[r][c] * k1;
      }
    }
    const vf b0 = load(bias + j0), b1 = load(bias + j0 + kLanes);
    const vi idx = lane + static_cast<int32_t>(j0);
    for (int r = 0; r < R; ++r) {
      const vf x0 = idx < lim[r] ? acc[r][0] + b0 : splat(-INFINITY);
      const vf x1 = idx + kLanes < lim[r] ? acc[r][1] + b1 : splat(-INFINITY);
      store(s + r * stride + j0, x0);
      store(s + r * stride + j0 + kLanes, x1);
      vmax[r] = vmax[r] > x0 ? vmax[r] : x0;
      vmax[r] = vmax[r] > x1 ? vmax[r] : x1;
    }
  }

  float inv[R];  // exact softmax per row; P = 0 on invisible keys (select, so stale NaNs vanish too)
  for (int r = 0; r < R; ++r) {
    float* row = s + r * stride;
    float m = -INFINITY;
    for (int l = 0; l < kLanes; ++l) m = std::max(m, vmax[r][l]);
    if (m == -INFINITY) {  // no visible key
      std::fill(row, row + kpad, 0.0f);
      inv[r] = 0.0f;
      continue;
    }
    const float total = exp_row(row, kpad, m);
    inv[r] = 1.0f / total;
  }

  constexpr int U = D / kLanes;  // out rows = P V / sum
  vf o[R][U] = {};
  for (int64_t j = 0; j < keys; ++j) {
    vf vj[U];
    for (int u = 0; u < U; ++u) vj[u] = load(V + j * D + u * kLanes);
    for (int r = 0; r < R; ++r) {
      const float pr = s[r * stride + j];
      for (int u = 0; u < U; ++u) o[r][u] += pr * vj[u];
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int u = 0; u < U; ++u) store(&p.out[((b * p.n + r0 + r) * p.H + h) * D + u * kLanes], o[r][u] * inv[r]);
}

template <int D, int R>
void blocks(const Problem& p, int64_t b, int64_t h, int64_t last, int64_t stride, const float* bias, float* s) {
  for (int64_t r0 = 0; r0 < p.n; r0 += R)
    block<D, R>(p, b, h, r0, static_cast<int>(std::min<int64_t>(R, p.n - r0)), last, stride, bias, s);
}

template <int D>
void write(const Problem& p, int64_t b, int64_t h) {
  const size_t item = (static_cast<size_t>(p.layer) * p.B + b) * p.H + h;
  float* KT = p.ck + item * p.S * D;
  float* V = p.cv + item * p.S * D;
  const int64_t w0 = p.start - (p.nw - p.n);
  for (int64_t i = 0; i < p.nw; ++i) {
    const size_t src = ((b * p.nw + i) * p.H + h) * D;
    for (int c = 0; c < D; ++c) {
      KT[c * p.S + w0 + i] = p.kn[src + c];
      V[(w0 + i) * D + c] = p.vn[src + c];
    }
  }
}

template <int D>
void item(const Problem& p, int64_t b, int64_t h) {
  write<D>(p, b, h);  // this item's cache rows only: items never touch each other's memory
  thread_local std::vector<float> s, bias;  // per-thread scratch, reused across calls
  // rows per block: R x 2 score vectors + 2 key vectors stay in the 32 vector registers during
  // QK^T (R = 12 at head dim <= 32; larger heads need R x D/16 registers for P V, so fewer rows)
  constexpr int kMaxRows = D <= 32 ? 12 : 8;
  const int64_t last = std::min<int64_t>(p.start + p.n, p.S);  // keys [0, last) were written
  const int64_t stride = round_up(last, kTile);
  const bool* valid = p.valid + b * p.S;
  bias.resize(stride);
  for (int64_t j = 0; j < stride; ++j) bias[j] = j < last && valid[j] ? 0.0f : -INFINITY;
  s.resize(static_cast<size_t>(kMaxRows) * stride);
  // equal blocks of at most kMaxRows rows (a 10-token decode step is one block of 10, not 8 + 2)
  const int64_t nblocks = (p.n + kMaxRows - 1) / kMaxRows;
  const float* bs = bias.data();
  float* ss = s.data();
  switch ((p.n + nblocks - 1) / nblocks) {
    case 1: blocks<D, 1>(p, b, h, last, stride, bs, ss); break;
    case 2: blocks<D, 2>(p, b, h, last, stride, bs, ss); break;
    case 3: blocks<D, 3>(p, b, h, last, stride, bs, ss); break;
    case 4: blocks<D, 4>(p, b, h, last, stride, bs, ss); break;
    case 5: blocks<D, 5>(p, b, h, last, stride, bs, ss); break;
    case 6: blocks<D, 6>(p, b, h, last, stride, bs, ss); break;
    case 7: blocks<D, 7>(p, b, h, last, stride, bs, ss); break;
    case 8: blocks<D, 8>(p, b, h, last, stride, bs, ss); break;
    case 9: blocks<D, (kMaxRows >= 9 ? 9 : 8)>(p, b, h, last, stride, bs, ss); break;
    case 10: blocks<D, (kMaxRows >= 10 ? 10 : 8)>(p, b, h, last, stride, bs, ss); break;
    case 11: blocks<D, (kMaxRows >= 11 ? 11 : 8)>(p, b, h, last, stride, bs, ss); break;
    default: blocks<D, kMaxRows>(p, b, h, last, stride, bs, ss); break;
  }
}

template <int D>
void attend(const Problem& p, ffi::ThreadPool& pool) {
  parallel_for(pool, p.B * p.H, [&](int64_t it) { item<D>(p, it / p.H, it % p.H); });
}

ffi::Error Impl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kn, ffi::Buffer<ffi::F32> vn,
                ffi::Buffer<ffi::F32> ck, ffi::Buffer<ffi::F32> cv, ffi::Buffer<ffi::PRED> valid,
                ffi::Buffer<ffi::S32> start, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> ck_out,
                ffi::ResultBuffer<ffi::F32> cv_out, int64_t layer, ffi::ThreadPool pool) {
  const auto qd = q.dimensions(), nd = kn.dimensions(), kd = ck.dimensions(), vd = cv.dimensions();
  if (qd.size() != 4 || nd.size() != 4 || kd.size() != 5 || vd.size() != 5)
    return ffi::Error::InvalidArgument("cached_attention: bad ranks");
  // the caches are aliased to the outputs; copy only if XLA ever hands separate buffers
  if (ck_out->typed_data() != ck.typed_data())
    std::copy(ck.typed_data(), ck.typed_data() + ck.element_count(), ck_out->typed_data());
  if (cv_out->typed_data() != cv.typed_data())
    std::copy(cv.typed_data(), cv.typed_data() + cv.element_count(), cv_out->typed_data());
  const int64_t nw = nd[1], w0 = static_cast<int64_t>(*start.typed_data());
  Problem p{q.typed_data(), kn.typed_data(), vn.typed_data(), ck_out->typed_data(), cv_out->typed_data(),
            valid.typed_data(), out->typed_data(), qd[0], qd[1], qd[2], vd[3], layer, w0 + nw - qd[1], nw};
  const int64_t d = qd[3];
  if (nd[0] != p.B || nd[2] != p.H || nd[3] != d || vn.dimensions().size() != 4 || vn.element_count() != kn.element_count() ||
      qd[1] > nw || kd[1] != p.B || kd[2] != p.H || kd[3] != d || kd[4] != p.S || vd[0] != kd[0] || vd[1] != p.B ||
      vd[2] != p.H || vd[4] != d || layer < 0 || layer >= kd[0] || w0 < 0 || w0 + nw > p.S || p.S % kTile)
    return ffi::Error::InvalidArgument("cached_attention: inconsistent shapes");
  switch (d) {
    case 16: attend<16>(p, pool); break;
    case 32: attend<32>(p, pool); break;
    case 64: attend<64>(p, pool); break;
    case 128: attend<128>(p, pool); break;
    default: return ffi::Error::InvalidArgument("cached_attention: head dim must be 16, 32, 64 or 128");
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace autogaze

namespace ffi = xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutogazeCachedAttention, autogaze::Impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Ctx<ffi::ThreadPool>());
