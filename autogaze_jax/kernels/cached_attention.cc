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
#include "attention.h"

namespace autogaze {
namespace {

ffi::Error Impl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kn, ffi::Buffer<ffi::F32> vn,
                ffi::Buffer<ffi::F32> ck, ffi::Buffer<ffi::F32> cv, ffi::Buffer<ffi::PRED> valid,
                ffi::Buffer<ffi::S32> start, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> ck_out,
                ffi::ResultBuffer<ffi::F32> cv_out, int64_t layer, ffi::ThreadPool pool) {
  const auto qd = q.dimensions(), nd = kn.dimensions(), kd = ck.dimensions(), vd = cv.dimensions();
  if (qd.size() != 4 || nd.size() != 4 || kd.size() != 5 || vd.size() != 5)
    return ffi::Error::InvalidArgument("cached_attention: bad ranks");
  in_place(ck, ck_out->typed_data());
  in_place(cv, cv_out->typed_data());
  const int64_t nw = nd[1], w0 = static_cast<int64_t>(*start.typed_data());
  Problem p{q.typed_data(), kn.typed_data(), vn.typed_data(), ck_out->typed_data(), cv_out->typed_data(),
            valid.typed_data(), out->typed_data(), qd[0], qd[1], qd[2], vd[3], layer, w0 + nw - qd[1], nw};
  const int64_t d = qd[3];
  if (nd[0] != p.B || nd[2] != p.H || nd[3] != d || vn.dimensions().size() != 4 || vn.element_count() != kn.element_count() ||
      qd[1] > nw || kd[1] != p.B || kd[2] != p.H || kd[3] != d || kd[4] != p.S || vd[0] != kd[0] || vd[1] != p.B ||
      vd[2] != p.H || vd[4] != d || layer < 0 || layer >= kd[0] || w0 < 0 || w0 + nw > p.S || p.S % kTile)
    return ffi::Error::InvalidArgument("cached_attention: inconsistent shapes");
  if (!attend_any(p, d, pool, /*write_cache=*/true))
    return ffi::Error::InvalidArgument("cached_attention: head dim must be 16, 32, 64 or 128");
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
