// SIMD helpers and the thread sharing of the fused CPU kernels (cached_attention.cc, vision.cc).
//
// Written with GCC/Clang vector extensions, so the kernels build for whatever SIMD the host has
// (-march=native); no intrinsics. 16 float lanes: one AVX-512 register, two AVX2 registers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <thread>
#ifdef __linux__
#include <sched.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace autogaze {

namespace ffi = xla::ffi;

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf load(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof(v)); }
inline vf splat(float x) { return vf{} + x; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// expf on 16 lanes (Cephes range reduction + degree-6 polynomial, ~1 ulp), arguments clamped to
// [-87, 88] (results stay normal and finite). n = round(x / ln 2) comes from adding 1.5 * 2^23, which
// leaves n in the low mantissa bits: no float <-> int conversions on the softmax's hot path.
inline vf vexp(vf x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23; bits 0x4B400000
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const vf t = x * 1.44269504088896341f + kMagic;
  const vf nf = t - kMagic;
  const vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  vi bits;
  __builtin_memcpy(&bits, &t, sizeof(bits));
  bits = (bits + 127) << 23;  // 2^n: (0x4B400000 + n + 127) << 23, the constant's low 9 bits are zero
  vf scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// row[0, n) <- exp(row - m) in place, 0 where row is -inf (masked keys; a select, so stale NaNs vanish
// too); returns the sum. n a multiple of kLanes; m the row's (finite) max.
inline float exp_row(float* row, int64_t n, float m) {
  vf sum = {};
  for (int64_t j = 0; j < n; j += kLanes) {
    const vf x = load(row + j);
    const vf e = x == splat(-INFINITY) ? splat(0.0f) : vexp(x - m);
    store(row + j, e);
    sum += e;
  }
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += sum[l];
  return total;
}

inline int cpu_count() {
  static const int n = [] {
    const char* env = std::getenv("AUTOGAZE_CPU_THREADS");
    if (env && std::atoi(env) > 0) return std::atoi(env);
#ifdef __linux__
    cpu_set_t set;  // the CPUs this process may run on (a container's share, not the host's count)
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return n;
}

// Runs fn(i) for i in [0, items), claimed from a shared counter by the calling thread and by helpers
// scheduled on XLA's own intra-op pool (whose workers otherwise spin between ops: extra threads of
// our own would fight them for the cores); returns when all are done, so consecutive calls are
// phases with a barrier between them. The caller never waits for a helper that has not started, so
// a busy pool cannot deadlock it; the state is shared-owned because a late helper may start after
// we return (it then finds nothing to claim and never calls fn).
template <class F>
void parallel_for(ffi::ThreadPool& pool, int64_t items, const F& fn) {
  struct State {
    explicit State(const F& f, int64_t n) : fn(f), items(n) {}
    F fn;
    int64_t items;
    std::atomic<int64_t> next{0}, done{0};
    void work() {
      for (int64_t it; (it = next.fetch_add(1, std::memory_order_relaxed)) < items;) {
        fn(it);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto st = std::make_shared<State>(fn, items);
  const int64_t helpers = std::min<int64_t>({items - 1, pool.num_threads(), cpu_count() - 1});
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([st] { st->work(); });
  st->work();
  while (st->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

}  // namespace autogaze
