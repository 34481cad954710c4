// Fused CPU kernels for the training-length masked attention (autogaze_jax/core/flash_attention.py),
// forward and backward, as XLA FFI calls:
//   AutogazeFlashForward:  q, k, v (B, L, H, D) unscaled -> out (B, L, H, D), lse (B, H, L);
//   AutogazeFlashBackward: the same inputs + out, lse, dout -> dq, dk, dv (B, L, H, D).
//
// Why: the teacher-forced gaze decoder (L ~ 3.7K, head dim 32) spends most of an NTP step in this
// attention; XLA runs each flash tile as separate small dots, selects, exps and reductions whose
// results go through memory, at ~50 GFLOP/s on this CPU. Here one (sample, head) pair is one work item
// (shared by the cores, simd.h): its queries, keys and values are packed once into contiguous
// buffers (keys and values also transposed), and a block of query rows computes its scores with
// register-blocked broadcast-FMAs over 32 keys at a time, only up to the last key any of its rows can
// see. The backward owns the item's dQ, dK, dV, so it needs no atomics and no second pass.
//
// Semantics (equal to the XLA path up to float rounding): query i sees key j iff
// (k_id[j] <= q_id[i] and valid[b, j]) or (edge[b, i] and i == j). Scores are q.k / sqrt(D); the
// softmax is exact per row (max, exp, sum); lse is the row's log-sum-exp of the scaled scores. A row
// that sees no key returns zeros (lse -inf) and gets zero gradients. Any id layout is exact; ids
// non-decreasing along the keys (token- or frame-causal) make each row block stop at its last
// visible key, which skips the masked upper triangle.
#include <climits>
#include <vector>

#include "simd.h"

namespace autogaze {
namespace {

constexpr int kTile = 2 * kLanes;  // keys per score register tile
constexpr int kChunk = 256;        // keys per backward chunk: its P and dS tiles stay in L1/L2

struct Problem {
  const float *q, *k, *v, *out, *lse, *dout;  // out, lse, dout: backward only
  const int32_t *qid, *kid;
  const bool *valid, *edge;
  float *o, *l, *dq, *dk, *dv;                // o, l: forward outputs; dq, dk, dv: backward outputs
  int64_t B, L, H;
};

inline vi load_i(const int32_t* p) { vi v; __builtin_memcpy(&v, p, sizeof(v)); return v; }

// One (b, h) item's packed operands and key metadata (thread-local, reused across items and calls).
template <int D>
struct Item {
  int64_t L = 0, Lp = 0;
  std::vector<float> qs, kt, kr, vt, vr, dor;  // rows (Lp, D) or transposed (D, Lp), zero-padded
  std::vector<int32_t> kkey, sufmin;          // key id, INT_MAX where invalid or padding; suffix min

  // rows (Lp, D) of src (B, L, H, D) at (b, h), times mult
  void rows(const Problem& p, const float* src, int64_t b, int64_t h, float mult, std::vector<float>& dst) {
    dst.assign(Lp * D, 0.0f);
    for (int64_t i = 0; i < L; ++i) {
      const float* s = src + ((b * L + i) * p.H + h) * D;
      for (int c = 0; c < D; ++c) dst[i * D + c] = s[c] * mult;
    }
  }
  void cols(const Problem& p, const float* src, int64_t b, int64_t h, std::vector<float>& dst) {
    dst.assign(Lp * D, 0.0f);
    for (int64_t i = 0; i < L; ++i) {
      const float* s = src + ((b * L + i) * p.H + h) * D;
      for (int c = 0; c < D; ++c) dst[c * Lp + i] = s[c];
    }
  }
  void keys(const Problem& p, int64_t b) {
    L = p.L;
    Lp = round_up(L, kTile);
    kkey.assign(Lp, INT_MAX);
    sufmin.assign(Lp + 1, INT_MAX);
    for (int64_t j = 0; j < L; ++j)
      if (p.valid[b * L + j]) kkey[j] = p.kid[j];
    for (int64_t j = Lp - 1; j >= 0; --j) sufmin[j] = std::min(sufmin[j + 1], kkey[j]);
  }
  // keys [0, n) hold every key row i can see
  int64_t reach(const Problem& p, int64_t b, int64_t i) const {
    // sufmin is non-decreasing: the first j with sufmin[j] > q_id[i] ends the visible keys
    const int64_t n = std::upper_bound(sufmin.begin(), sufmin.begin() + Lp, p.qid[i]) - sufmin.begin();
    return p.edge[b * L + i] ? std::max<int64_t>(n, i + 1) : n;
  }
  int64_t block_reach(const Problem& p, int64_t b, int64_t r0, int rows) const {
    int64_t n = 0;
    for (int r = 0; r < rows; ++r) n = std::max(n, reach(p, b, r0 + r));
    return n;
  }
};

// Masked scores of R rows (row pointers a[r], D wide) against 32 keys at j0 of the transposed bt
// (D, Lp): acc[r] = a[r] . bt[:, j0:j0+32].
template <int D, int R>
inline void tile_dots(const float* const* a, const float* bt, int64_t Lp, int64_t j0, vf (&acc)[R][2]) {
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vf{};
  for (int c = 0; c < D; ++c) {
    const vf k0 = load(bt + c * Lp + j0), k1 = load(bt + c * Lp + j0 + kLanes);
    for (int r = 0; r < R; ++r) {
      const float x = a[r][c];
      acc[r][0] += x * k0;
      acc[r][1] += x * k1;
    }
  }
}

// Visibility of 32 keys at j0 for row i (q id qi, self edge at column ediag or -1).
inline void tile_mask(const int32_t* kkey, int64_t j0, int32_t qi, int32_t ediag, vi (&vis)[2]) {
  vi lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = l;
  for (int u = 0; u < 2; ++u) {
    const vi idx = lane + static_cast<int32_t>(j0 + u * kLanes);
    vis[u] = (load_i(kkey + j0 + u * kLanes) <= qi) | (idx == ediag);
  }
}

// ---- forward ----

template <int D, int R>
void fwd_block(const Problem& p, const Item<D>& it, int64_t b, int64_t h, int64_t r0, int rows,
               std::vector<float>& s) {
  const int64_t keys = it.block_reach(p, b, r0, rows), kpad = round_up(keys, kTile);
  const float* a[R];
  int32_t qi[R], ediag[R];
  for (int r = 0; r < R; ++r) {
    const int64_t i = r0 + std::min(r, rows - 1);  // spare rows repeat the last one, never stored
    a[r] = it.qs.data() + i * D;
    qi[r] = r < rows ? p.qid[i] : INT_MIN;
    ediag[r] = r < rows && p.edge[b * p.L + i] ? static_cast<int32_t>(i) : -1;
  }
  vf vmax[R];
  for (int r = 0; r < R; ++r) vmax[r] = splat(-INFINITY);
  for (int64_t j0 = 0; j0 < kpad; j0 += kTile) {
    vf acc[R][2];
    tile_dots<D, R>(a, it.kt.data(), it.Lp, j0, acc);
    for (int r = 0; r < R; ++r) {
      vi vis[2];
      tile_mask(it.kkey.data(), j0, qi[r], ediag[r], vis);
      for (int u = 0; u < 2; ++u) {
        const vf x = vis[u] ? acc[r][u] : splat(-INFINITY);
        store(s.data() + r * kpad + j0 + u * kLanes, x);
        vmax[r] = vmax[r] > x ? vmax[r] : x;
      }
    }
  }
  constexpr int U = D / kLanes;
  float inv[R];
  for (int r = 0; r < R; ++r) {
    float* row = s.data() + r * kpad;
    float m = -INFINITY;
    for (int l = 0; l < kLanes; ++l) m = std::max(m, vmax[r][l]);
    const int64_t i = r0 + r;
    if (m == -INFINITY) {  // sees no key (or a spare row)
      std::fill(row, row + kpad, 0.0f);
      inv[r] = 0.0f;
      if (r < rows) p.l[(b * p.H + h) * p.L + i] = -INFINITY;
      continue;
    }
    const float total = exp_row(row, kpad, m);
    inv[r] = 1.0f / total;
    if (r < rows) p.l[(b * p.H + h) * p.L + i] = m + std::log(total);
  }
  vf o[R][U] = {};
  for (int64_t j = 0; j < keys; ++j) {
    vf vj[U];
    for (int u = 0; u < U; ++u) vj[u] = load(it.vr.data() + j * D + u * kLanes);
    for (int r = 0; r < R; ++r) {
      const float pr = s[r * kpad + j];
      for (int u = 0; u < U; ++u) o[r][u] += pr * vj[u];
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int u = 0; u < U; ++u) store(p.o + ((b * p.L + r0 + r) * p.H + h) * D + u * kLanes, o[r][u] * inv[r]);
}

// rows per block: R x 2 score vectors + 2 key vectors in registers for q K^T, R x D/16 for P V
template <int D>
constexpr int fwd_rows() { return D <= 32 ? 12 : 8; }

template <int D>
void forward_item(const Problem& p, int64_t b, int64_t h) {
  thread_local Item<D> it;
  thread_local std::vector<float> s;
  it.keys(p, b);
  it.rows(p, p.q, b, h, 1.0f / std::sqrt(static_cast<float>(D)), it.qs);
  it.cols(p, p.k, b, h, it.kt);
  it.rows(p, p.v, b, h, 1.0f, it.vr);
  constexpr int R = fwd_rows<D>();
  s.resize(static_cast<size_t>(R) * it.Lp + kTile);
  for (int64_t r0 = 0; r0 < p.L; r0 += R)
    fwd_block<D, R>(p, it, b, h, r0, static_cast<int>(std::min<int64_t>(R, p.L - r0)), s);
}

// ---- backward ----

// Rows [r0, r0 + rows) (rows <= RB): for each chunk of keys, P = exp(S - lse) and dS = P (dO V^T -
// delta) in RB x kChunk tiles, then dQ += dS K (registers), dK += dS^T Q and dV += P^T dO (the
// item's buffers).
template <int D>
struct Backward {
  static constexpr int U = D / kLanes;
  static constexpr int RS = D <= 32 ? 12 : 8;       // rows of a score tile (R x 2 accumulators)
  static constexpr int RB = 24;                      // rows per block: 2-3 score tiles
  static constexpr int RQ = U <= 2 ? 12 : 24 / U;    // rows of a dQ register tile (RQ x U accumulators)
  static constexpr int KB = U <= 2 ? 8 : 16 / U;     // keys of a dK/dV register tile (KB x U)

  const Problem& p;
  Item<D>& it;
  int64_t b, h;
  std::vector<float> &P, &dS, &dk, &dv, &delta, &lse;

  // P and dS of rows [r0, r0 + rows) (rows <= R) and keys [c0, c1), into tile rows s0 .. s0 + R
  template <int R>
  void scores(int64_t r0, int rows, int64_t c0, int64_t c1, int s0) {
    const float *a[R], *g[R];
    int32_t qi[R], ediag[R];
    float li[R], di[R];
    for (int r = 0; r < R; ++r) {
      const bool real = r < rows;
      const int64_t i = r0 + (real ? r : rows - 1);
      a[r] = it.qs.data() + i * D;
      g[r] = it.dor.data() + i * D;
      qi[r] = real ? p.qid[i] : INT_MIN;
      ediag[r] = real && p.edge[b * p.L + i] ? static_cast<int32_t>(i) : -1;
      li[r] = lse[i];
      di[r] = delta[i];
    }
    for (int64_t j0 = c0; j0 < c1; j0 += kTile) {
      vf acc[R][2];  // scores, then dO V^T (one set of accumulators: two would spill registers)
      tile_dots<D, R>(a, it.kt.data(), it.Lp, j0, acc);
      for (int r = 0; r < R; ++r) {
        vi vis[2];
        tile_mask(it.kkey.data(), j0, qi[r], ediag[r], vis);
        for (int u = 0; u < 2; ++u)
          store(P.data() + (s0 + r) * kChunk + (j0 - c0) + u * kLanes,
                vis[u] ? vexp(acc[r][u] - li[r]) : splat(0.0f));
      }
      tile_dots<D, R>(g, it.vt.data(), it.Lp, j0, acc);
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < 2; ++u) {
          const size_t at = static_cast<size_t>(s0 + r) * kChunk + (j0 - c0) + u * kLanes;
          store(dS.data() + at, load(P.data() + at) * (acc[r][u] - di[r]));
        }
    }
  }

  template <int R>
  void dq_rows(int rows, int64_t r_off, int64_t c0, int64_t c1, float* dqb) {
    vf acc[R][U] = {};
    for (int64_t j = c0; j < c1; ++j) {
      vf kj[U];
      for (int u = 0; u < U; ++u) kj[u] = load(it.kr.data() + j * D + u * kLanes);
      for (int r = 0; r < R; ++r) {
        const float x = dS[(r_off + r) * kChunk + (j - c0)];
        for (int u = 0; u < U; ++u) acc[r][u] += x * kj[u];
      }
    }
    for (int r = 0; r < std::min(R, rows); ++r)
      for (int u = 0; u < U; ++u) {
        float* d = dqb + (r_off + r) * D + u * kLanes;
        store(d, load(d) + acc[r][u]);
      }
  }

  // dst rows [c0, c1) += coef^T (rows x chunk) @ src rows (rows x D)
  void outer(const std::vector<float>& coef, const float* src, int rows, int64_t c0, int64_t c1, float* dst) {
    for (int64_t j0 = c0; j0 < c1; j0 += KB) {
      vf acc[KB][U];
      for (int kk = 0; kk < KB; ++kk)
        for (int u = 0; u < U; ++u) acc[kk][u] = load(dst + (j0 + kk) * D + u * kLanes);
      for (int r = 0; r < rows; ++r) {
        vf x[U];
        for (int u = 0; u < U; ++u) x[u] = load(src + r * D + u * kLanes);
        const float* c = coef.data() + static_cast<size_t>(r) * kChunk + (j0 - c0);
        for (int kk = 0; kk < KB; ++kk)
          for (int u = 0; u < U; ++u) acc[kk][u] += c[kk] * x[u];
      }
      for (int kk = 0; kk < KB; ++kk)
        for (int u = 0; u < U; ++u) store(dst + (j0 + kk) * D + u * kLanes, acc[kk][u]);
    }
  }

  void block(int64_t r0, int rows) {
    const int64_t keys = it.block_reach(p, b, r0, rows), kpad = round_up(keys, kTile);
    alignas(64) float dqb[RB * D] = {};
    for (int64_t c0 = 0; c0 < kpad; c0 += kChunk) {
      const int64_t c1 = std::min<int64_t>(c0 + kChunk, kpad);
      for (int s0 = 0; s0 < RB; s0 += RS) {
        const int n = std::max(0, std::min(RS, rows - s0));
        if (n == 0) {  // spare tile of a short block: zero P and dS rows
          std::fill(P.begin() + s0 * kChunk, P.begin() + (s0 + RS) * kChunk, 0.0f);
          std::fill(dS.begin() + s0 * kChunk, dS.begin() + (s0 + RS) * kChunk, 0.0f);
        } else {
          scores<RS>(r0 + s0, n, c0, c1, s0);
        }
      }
      for (int s0 = 0; s0 < rows; s0 += RQ) dq_rows<RQ>(rows - s0, s0, c0, c1, dqb);
      outer(dS, it.qs.data() + r0 * D, rows, c0, c1, dk.data());
      outer(P, it.dor.data() + r0 * D, rows, c0, c1, dv.data());
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < D; ++c) p.dq[((b * p.L + r0 + r) * p.H + h) * D + c] = dqb[r * D + c] * scale;
  }

};

template <int D>
void backward_item(const Problem& p, int64_t b, int64_t h) {
  thread_local Item<D> it;
  thread_local std::vector<float> P, dS, dk, dv, delta, lse;
  it.keys(p, b);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  it.rows(p, p.q, b, h, scale, it.qs);
  it.cols(p, p.k, b, h, it.kt);
  it.rows(p, p.k, b, h, 1.0f, it.kr);
  it.cols(p, p.v, b, h, it.vt);
  it.rows(p, p.dout, b, h, 1.0f, it.dor);
  const int64_t L = p.L, Lp = it.Lp;
  delta.assign(Lp, 0.0f);
  lse.assign(Lp, INFINITY);
  for (int64_t i = 0; i < L; ++i) {
    const float* o = p.out + ((b * L + i) * p.H + h) * D;
    float acc = 0.0f;
    for (int c = 0; c < D; ++c) acc += o[c] * it.dor[i * D + c];
    delta[i] = acc;
    lse[i] = p.lse[(b * p.H + h) * L + i];
  }
  using BW = Backward<D>;
  P.assign(BW::RB * kChunk, 0.0f);
  dS.assign(BW::RB * kChunk, 0.0f);
  dk.assign(Lp * D, 0.0f);
  dv.assign(Lp * D, 0.0f);
  BW bw{p, it, b, h, P, dS, dk, dv, delta, lse};
  for (int64_t r0 = 0; r0 < L; r0 += BW::RB) bw.block(r0, static_cast<int>(std::min<int64_t>(BW::RB, L - r0)));
  for (int64_t j = 0; j < L; ++j) {
    float* gk = p.dk + ((b * L + j) * p.H + h) * D;
    float* gv = p.dv + ((b * L + j) * p.H + h) * D;
    for (int c = 0; c < D; ++c) {
      gk[c] = dk[j * D + c];
      gv[c] = dv[j * D + c];
    }
  }
}

}  // namespace
}  // namespace autogaze

namespace autogaze {
namespace {

template <int D>
void forward_all(const Problem& p, ffi::ThreadPool& pool) {
  parallel_for(pool, p.B * p.H, [&](int64_t it) { forward_item<D>(p, it / p.H, it % p.H); });
}

template <int D>
void backward_all(const Problem& p, ffi::ThreadPool& pool) {
  parallel_for(pool, p.B * p.H, [&](int64_t it) { backward_item<D>(p, it / p.H, it % p.H); });
}

// Checks the shared operands q, k, v (B, L, H, D), ids (L,), masks (B, L); fills p's inputs.
ffi::Error bind(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::F32>& v,
                ffi::Buffer<ffi::S32>& qid, ffi::Buffer<ffi::S32>& kid, ffi::Buffer<ffi::PRED>& valid,
                ffi::Buffer<ffi::PRED>& edge, Problem& p, int64_t& d) {
  const auto qd = q.dimensions();
  if (qd.size() != 4 || k.dimensions().size() != 4 || v.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("flash_attention: q, k, v must be (B, L, H, D)");
  p.B = qd[0], p.L = qd[1], p.H = qd[2], d = qd[3];
  for (int a = 0; a < 4; ++a)
    if (k.dimensions()[a] != qd[a] || v.dimensions()[a] != qd[a])
      return ffi::Error::InvalidArgument("flash_attention: q, k, v shapes differ");
  if (qid.element_count() != p.L || kid.element_count() != p.L || valid.element_count() != p.B * p.L ||
      edge.element_count() != p.B * p.L)
    return ffi::Error::InvalidArgument("flash_attention: ids must be (L,), valid and edge (B, L)");
  if (d != 16 && d != 32 && d != 64 && d != 128)
    return ffi::Error::InvalidArgument("flash_attention: head dim must be 16, 32, 64 or 128");
  p.q = q.typed_data(), p.k = k.typed_data(), p.v = v.typed_data();
  p.qid = qid.typed_data(), p.kid = kid.typed_data(), p.valid = valid.typed_data(), p.edge = edge.typed_data();
  return ffi::Error::Success();
}

template <void (*Run16)(const Problem&, ffi::ThreadPool&), void (*Run32)(const Problem&, ffi::ThreadPool&),
          void (*Run64)(const Problem&, ffi::ThreadPool&), void (*Run128)(const Problem&, ffi::ThreadPool&)>
void dispatch(int64_t d, const Problem& p, ffi::ThreadPool& pool) {
  switch (d) {
    case 16: Run16(p, pool); break;
    case 32: Run32(p, pool); break;
    case 64: Run64(p, pool); break;
    default: Run128(p, pool); break;
  }
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                       ffi::Buffer<ffi::S32> qid, ffi::Buffer<ffi::S32> kid, ffi::Buffer<ffi::PRED> valid,
                       ffi::Buffer<ffi::PRED> edge, ffi::ResultBuffer<ffi::F32> out,
                       ffi::ResultBuffer<ffi::F32> lse, ffi::ThreadPool pool) {
  Problem p{};
  int64_t d = 0;
  if (auto e = bind(q, k, v, qid, kid, valid, edge, p, d); e.failure()) return e;
  if (out->element_count() != q.element_count() || lse->element_count() != p.B * p.H * p.L)
    return ffi::Error::InvalidArgument("flash_attention: bad output shapes");
  p.o = out->typed_data(), p.l = lse->typed_data();
  dispatch<forward_all<16>, forward_all<32>, forward_all<64>, forward_all<128>>(d, p, pool);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::S32> qid, ffi::Buffer<ffi::S32> kid, ffi::Buffer<ffi::PRED> valid,
                        ffi::Buffer<ffi::PRED> edge, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                        ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv, ffi::ThreadPool pool) {
  Problem p{};
  int64_t d = 0;
  if (auto e = bind(q, k, v, qid, kid, valid, edge, p, d); e.failure()) return e;
  if (out.element_count() != q.element_count() || dout.element_count() != q.element_count() ||
      lse.element_count() != p.B * p.H * p.L || dq->element_count() != q.element_count() ||
      dk->element_count() != q.element_count() || dv->element_count() != q.element_count())
    return ffi::Error::InvalidArgument("flash_attention backward: bad shapes");
  p.out = out.typed_data(), p.lse = lse.typed_data(), p.dout = dout.typed_data();
  p.dq = dq->typed_data(), p.dk = dk->typed_data(), p.dv = dv->typed_data();
  dispatch<backward_all<16>, backward_all<32>, backward_all<64>, backward_all<128>>(d, p, pool);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace autogaze

namespace ffi = xla::ffi;

// the operands both calls share: q, k, v, q_id, k_id, valid, edge
static auto BindShared() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()    // q
      .Arg<ffi::Buffer<ffi::F32>>()    // k
      .Arg<ffi::Buffer<ffi::F32>>()    // v
      .Arg<ffi::Buffer<ffi::S32>>()    // q_id
      .Arg<ffi::Buffer<ffi::S32>>()    // k_id
      .Arg<ffi::Buffer<ffi::PRED>>()   // valid
      .Arg<ffi::Buffer<ffi::PRED>>();  // edge
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutogazeFlashForward, autogaze::ForwardImpl,
                              BindShared()
                                  .Ret<ffi::Buffer<ffi::F32>>()   // out
                                  .Ret<ffi::Buffer<ffi::F32>>()   // lse
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutogazeFlashBackward, autogaze::BackwardImpl,
                              BindShared()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // out
                                  .Arg<ffi::Buffer<ffi::F32>>()   // lse
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dout
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dk
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dv
                                  .Ctx<ffi::ThreadPool>());
