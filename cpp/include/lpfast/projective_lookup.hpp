// Fused lookup of a projective-clustering embedding and its backward.
//
// The table (n, d) is stored as coefficients C (n, j), labels (n,) in [0, k) and bases
// B (k, j, d), all row-major: row i of the table is C[i] @ B[labels[i]]. For N token ids:
//
//   forward      out[t, :] = C[ids[t]] @ B[labels[ids[t]]]                      (N, d)
//   grad coef    dC[i]     = sum_{t : ids[t] = i, i != padding} B[c_t] @ g[t]   (n, j)
//   grad bases   dB[c]     = sum_{t : labels[ids[t]] = c} C[ids[t]]^T g[t]      (k, j, d)
//
// Tokens are first bounds-checked and stably sorted by subspace (a counting sort), so each
// register tile reuses one subspace's basis across up to 4 tokens; output rows are written
// in place (no gather/scatter copies). Every output value is computed by one thread with a
// summation order fixed by the token order alone: results are bitwise identical for any
// thread count, and duplicate ids are accumulated in token order. dC is accumulated in two
// passes: per-token products B[c_t] g[t] (parallel over tokens) into a scratch (N, j), then
// each thread adds them, in token order, into the rows of its own slice of ids [0, n).
// The kernels hold no global state: concurrent calls are safe.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "parallel.hpp"

namespace lpfast {

template <class T>
struct ProjectiveTable {
  const T* coef = nullptr;                // (n, j)
  const std::int64_t* labels = nullptr;   // (n,), values in [0, k)
  const T* bases = nullptr;               // (k, j, d)
  std::int64_t n = 0, j = 0, k = 0, d = 0;
};

namespace detail {

namespace ei = Eigen::internal;

template <class T>
using Pk = typename ei::packet_traits<T>::type;

template <class T>
inline constexpr int kPk = ei::unpacket_traits<Pk<T>>::size;

// Packets per column tile: 4 x 4 accumulators fit AVX-512's 32 registers; with 16
// registers (AVX2, NEON) 4 x 2 leaves room for the basis row and the broadcast.
#ifdef EIGEN_VECTORIZE_AVX512
inline constexpr int kTileV = 4;
#else
inline constexpr int kTileV = 2;
#endif
inline constexpr int kTileR = 4;  // tokens (forward) or basis rows (backward) per tile

// Tokens sorted by subspace: tokens of subspace c are order[start[c] .. start[c+1]).
struct SubspaceOrder {
  std::vector<std::int64_t> start, order;
};

template <class T>
SubspaceOrder sort_by_subspace(const std::int64_t* ids, std::int64_t N,
                               const ProjectiveTable<T>& tab) {
  SubspaceOrder s;
  s.start.assign(static_cast<std::size_t>(tab.k + 1), 0);
  s.order.resize(static_cast<std::size_t>(N));
  for (std::int64_t t = 0; t < N; ++t) {
    const std::int64_t i = ids[t];
    if (i < 0 || i >= tab.n) {
      throw std::out_of_range("ids: index " + std::to_string(i) + " at position " +
                              std::to_string(t) + " is out of range for " +
                              std::to_string(tab.n) + " embeddings");
    }
    const std::int64_t c = tab.labels[i];
    if (c < 0 || c >= tab.k) {
      throw std::invalid_argument("labels: row " + std::to_string(i) + " has label " +
                                  std::to_string(c) + ", expected [0, " +
                                  std::to_string(tab.k) + ")");
    }
    ++s.start[static_cast<std::size_t>(c + 1)];
  }
  for (std::int64_t c = 0; c < tab.k; ++c) s.start[c + 1] += s.start[c];
  std::vector<std::int64_t> next(s.start.begin(), s.start.end() - 1);
  for (std::int64_t t = 0; t < N; ++t) s.order[next[tab.labels[ids[t]]]++] = t;
  return s;
}

// out[r][0 .. V*P) = sum_l a[r][l] * b[l][col .. col + V*P) for r < R.
template <class T, int R, int V>
inline void axpy_tile(const T* const* a, const T* const* b, std::int64_t col, std::int64_t len,
                      T* const* out) {
  using P = Pk<T>;
  constexpr int S = kPk<T>;
  P acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = ei::pset1<P>(T(0));
  for (std::int64_t l = 0; l < len; ++l) {
    P bv[V];
    for (int v = 0; v < V; ++v) bv[v] = ei::ploadu<P>(b[l] + col + v * S);
    for (int r = 0; r < R; ++r) {
      const P av = ei::pset1<P>(a[r][l]);
      for (int v = 0; v < V; ++v) acc[r][v] = ei::pmadd(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) ei::pstoreu(out[r] + col + v * S, acc[r][v]);
}

// The columns [0, width) of out[r] = sum_l a[r][l] * b[l][:], r < R: tiles of kTileV
// packets, then single packets, then scalars (each value summed over l in order).
template <class T, int R>
void axpy_rows(const T* const* a, const T* const* b, std::int64_t len, std::int64_t width,
               T* const* out) {
  constexpr int S = kPk<T>;
  std::int64_t col = 0;
  for (; col + kTileV * S <= width; col += kTileV * S) axpy_tile<T, R, kTileV>(a, b, col, len, out);
  for (; col + S <= width; col += S) axpy_tile<T, R, 1>(a, b, col, len, out);
  for (; col < width; ++col) {
    for (int r = 0; r < R; ++r) {
      T s(0);
      for (std::int64_t l = 0; l < len; ++l) s += a[r][l] * b[l][col];
      out[r][col] = s;
    }
  }
}

template <class T>
void axpy_rows_any(int rows, const T* const* a, const T* const* b, std::int64_t len,
                   std::int64_t width, T* const* out) {
  switch (rows) {
    case 4: axpy_rows<T, 4>(a, b, len, width, out); break;
    case 3: axpy_rows<T, 3>(a, b, len, width, out); break;
    case 2: axpy_rows<T, 2>(a, b, len, width, out); break;
    default: axpy_rows<T, 1>(a, b, len, width, out); break;
  }
}

// out[r][l] = dot(g[r][0 .. d), b[l*d .. l*d + d)) for r < R, l < L.
template <class T, int R, int L>
inline void dot_tile(const T* const* g, const T* b, std::int64_t d, T* const* out,
                     std::int64_t l0) {
  using P = Pk<T>;
  constexpr int S = kPk<T>;
  P acc[R][L];
  for (int r = 0; r < R; ++r)
    for (int l = 0; l < L; ++l) acc[r][l] = ei::pset1<P>(T(0));
  std::int64_t col = 0;
  for (; col + S <= d; col += S) {
    P bv[L];
    for (int l = 0; l < L; ++l) bv[l] = ei::ploadu<P>(b + l * d + col);
    for (int r = 0; r < R; ++r) {
      const P gv = ei::ploadu<P>(g[r] + col);
      for (int l = 0; l < L; ++l) acc[r][l] = ei::pmadd(gv, bv[l], acc[r][l]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int l = 0; l < L; ++l) {
      T s = ei::predux(acc[r][l]);
      for (std::int64_t c = col; c < d; ++c) s += g[r][c] * b[l * d + c];
      out[r][l0 + l] = s;
    }
  }
}

template <class T, int R>
void dot_rows(const T* const* g, const T* b, std::int64_t j, std::int64_t d, T* const* out) {
  std::int64_t l = 0;
  for (; l + kTileR <= j; l += kTileR) dot_tile<T, R, kTileR>(g, b + l * d, d, out, l);
  for (; l < j; ++l) dot_tile<T, R, 1>(g, b + l * d, d, out, l);
}

template <class T>
void dot_rows_any(int rows, const T* const* g, const T* b, std::int64_t j, std::int64_t d,
                  T* const* out) {
  switch (rows) {
    case 4: dot_rows<T, 4>(g, b, j, d, out); break;
    case 3: dot_rows<T, 3>(g, b, j, d, out); break;
    case 2: dot_rows<T, 2>(g, b, j, d, out); break;
    default: dot_rows<T, 1>(g, b, j, d, out); break;
  }
}

// Contiguous chunks of the sorted token list, one per thread, cut at multiples of 4.
inline std::int64_t chunk_bound(std::int64_t N, int part, int parts) {
  if (part >= parts) return N;
  const std::int64_t b = (N * part / parts) / kTileR * kTileR;
  return std::min(b, N);
}

}  // namespace detail

// out (N, d) = the table's rows ids[0 .. N). Throws std::out_of_range for an id outside
// [0, n) (before writing anything) and std::invalid_argument for a label outside [0, k).
template <class T>
void projective_lookup(const ProjectiveTable<T>& tab, const std::int64_t* ids, std::int64_t N,
                       T* out) {
  const detail::SubspaceOrder s = detail::sort_by_subspace(ids, N, tab);
  if (N == 0 || tab.d == 0) return;
  const std::int64_t j = tab.j, d = tab.d;
  std::vector<const T*> basis_rows(static_cast<std::size_t>(tab.k * j));
  for (std::int64_t r = 0; r < tab.k * j; ++r) basis_rows[r] = tab.bases + r * d;
  const int nt = threads_for(static_cast<double>(N) * j * d, 2.0e5);
  parallel_region(nt, [&](int tid, int team) {
    const std::int64_t lo = detail::chunk_bound(N, tid, team);
    const std::int64_t hi = detail::chunk_bound(N, tid + 1, team);
    const T* a[detail::kTileR];
    T* o[detail::kTileR];
    for (std::int64_t c = 0; c < tab.k; ++c) {
      const std::int64_t b = std::max(lo, s.start[c]), e = std::min(hi, s.start[c + 1]);
      const T* const* basis = basis_rows.data() + c * j;
      for (std::int64_t t = b; t < e; t += detail::kTileR) {
        const int rows = static_cast<int>(std::min<std::int64_t>(detail::kTileR, e - t));
        for (int r = 0; r < rows; ++r) {
          const std::int64_t tok = s.order[t + r];
          a[r] = tab.coef + ids[tok] * j;
          o[r] = out + tok * d;
        }
        detail::axpy_rows_any<T>(rows, a, basis, j, d, o);
      }
    }
  });
}

// Gradients of the lookup for upstream grad (N, d). dcoef (n, j) and dbases (k, j, d) are
// overwritten; either may be null (not wanted). Rows ids[t] == padding_idx get no coef
// gradient (padding_idx < 0: none); the bases still receive those tokens' contribution,
// as for nn.Embedding(padding_idx) followed by a product with the bases.
template <class T>
void projective_lookup_backward(const ProjectiveTable<T>& tab, const std::int64_t* ids,
                                std::int64_t N, const T* grad, std::int64_t padding_idx,
                                T* dcoef, T* dbases) {
  const detail::SubspaceOrder s = detail::sort_by_subspace(ids, N, tab);
  const std::int64_t n = tab.n, j = tab.j, k = tab.k, d = tab.d;
  const int nt = threads_for(static_cast<double>(N) * j * d, 2.0e5);
  std::vector<T> per_token;
  if (dcoef != nullptr) per_token.resize(static_cast<std::size_t>(N * j));
  // dbases as the forward's tile with the sorted tokens as the summed index: "a" rows are
  // the coefficients transposed into sorted token order, coef_t[l][q] = C[ids[order[q]]][l],
  // and "b" rows are the tokens' gradient rows. Work items: (subspace, kTileR basis rows).
  std::vector<T> coef_t;
  std::vector<const T*> grad_rows;
  const std::int64_t row_tiles = (j + detail::kTileR - 1) / detail::kTileR;
  const std::int64_t items = dbases != nullptr ? k * row_tiles : 0;
  if (dbases != nullptr) {
    coef_t.resize(static_cast<std::size_t>(j * N));
    grad_rows.resize(static_cast<std::size_t>(N));
    for (std::int64_t q = 0; q < N; ++q) {
      const std::int64_t tok = s.order[q];
      const T* row = tab.coef + ids[tok] * j;
      for (std::int64_t l = 0; l < j; ++l) coef_t[l * N + q] = row[l];
      grad_rows[q] = grad + tok * d;
    }
  }
  // A raw region, not parallel_region: the `omp for` below ends in a barrier that a thread
  // leaving early would never reach; nothing in it allocates or throws.
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), team = team_size();
    if (dcoef != nullptr) {
      // Pass 1: per_token[t] = B[c_t] g[t], over this thread's chunk of sorted tokens.
      const std::int64_t lo = detail::chunk_bound(N, tid, team);
      const std::int64_t hi = detail::chunk_bound(N, tid + 1, team);
      const T* g[detail::kTileR];
      T* o[detail::kTileR];
      for (std::int64_t c = 0; c < k; ++c) {
        const std::int64_t b = std::max(lo, s.start[c]), e = std::min(hi, s.start[c + 1]);
        for (std::int64_t t = b; t < e; t += detail::kTileR) {
          const int rows = static_cast<int>(std::min<std::int64_t>(detail::kTileR, e - t));
          for (int r = 0; r < rows; ++r) {
            const std::int64_t tok = s.order[t + r];
            g[r] = grad + tok * d;
            o[r] = per_token.data() + tok * j;
          }
          detail::dot_rows_any<T>(rows, g, tab.bases + c * j * d, j, d, o);
        }
      }
    }
#pragma omp for schedule(static)
    for (std::int64_t it = 0; it < items; ++it) {
      const std::int64_t c = it / row_tiles, l0 = (it % row_tiles) * detail::kTileR;
      const int rows = static_cast<int>(std::min<std::int64_t>(detail::kTileR, j - l0));
      const std::int64_t first = s.start[c], m = s.start[c + 1] - first;
      const T* a[detail::kTileR];
      T* o[detail::kTileR];
      for (int r = 0; r < rows; ++r) {
        a[r] = coef_t.data() + (l0 + r) * N + first;
        o[r] = dbases + (c * j + l0 + r) * d;
      }
      detail::axpy_rows_any<T>(rows, a, grad_rows.data() + first, m, d, o);
    }
  }
  if (dcoef != nullptr) {
    // Pass 2: rows of dcoef in thread-owned slices of [0, n), tokens added in token order.
    const int nt2 = threads_for(static_cast<double>(n) * j + static_cast<double>(N) * j, 2.0e5);
    parallel_region(nt2, [&](int tid, int team) {
      const auto [lo, hi] = static_range(n, tid, team);
      std::fill(dcoef + lo * j, dcoef + hi * j, T(0));
      for (std::int64_t t = 0; t < N; ++t) {
        const std::int64_t id = ids[t];
        if (id < lo || id >= hi || id == padding_idx) continue;
        T* dst = dcoef + id * j;
        const T* src = per_token.data() + t * j;
        for (std::int64_t l = 0; l < j; ++l) dst[l] += src[l];
      }
    });
  }
}

}  // namespace lpfast
