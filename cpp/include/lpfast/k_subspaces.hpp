// k-subspace projective clustering: Lloyd iterations over k orthonormal bases V_c (d x j),
// seeded by D^p sampling or random row groups, with restarts in parallel.
//
// Conventions (DESIGN.md): rows are points, dist(x, V)^2 = ||x||^2 - ||V^T x||^2, and the
// cost is sum_i w_i * min_c dist(x_i, V_c)^p.
//
// One Lloyd iteration:
//   assign   one GEMM of X against the stacked bases B = [V_1 ... V_k] (d x k*j), in fixed
//            chunks of rows, so every row's result is independent of the thread count;
//            the label is the cluster with the smallest distance (ties: lowest index).
//            After the first, distance bounds carried between iterations skip the
//            (row, basis) pairs they rule out (Lloyd::assign_bounded), with the same labels.
//   reseed   each empty cluster takes the next j rows of the worst-served order (largest
//            w_i * dist_i^p, ties by lowest row) and becomes their top-j subspace;
//   refit    p = 2: V_c = top-j eigenvectors of G_c = sum_{i in c} w_i x_i x_i^T. G_c is kept
//            in double between iterations and updated by the rows that changed cluster
//            (+/- rank updates), rebuilt when more than half its rows changed; the cluster
//            whose update would read the most rows is derived as G_total - sum of the others.
//            p != 2: `irls_steps` IRLS steps per Lloyd iteration, each with
//            omega_i = w_i * max(dist(x_i, V_c), eps)^(p - 2) and V_c = top-j of
//            sum omega_i x_i x_i^T (a majorize-minimize step for p in [1, 2]).
//            A cluster of m rows with j < m <= d (typical on coresets) is refit from its
//            m x m kernel matrix instead of the d x d Gram.
//   top-j    the warm-started top-k eigensolver of sym_eigen.hpp.
// The run stops when the cost fails to drop by more than tol * cost, and returns the
// iterate of lowest cost.
//
// Grams: gram.hpp's weighted Gram (fixed segments summed in order in double), so results
// are the same for any number of threads.
// Restarts run one per thread; restart r draws from its own RNG stream seeded from
// (seed, r). The kernels hold no global state: concurrent calls are safe.
//
// Files, by job: ks_problem.hpp (options, data, fit, cost), ks_assign.hpp (labels and
// distances), ks_seed.hpp (initial bases), ks_lloyd.hpp (the iterations), this file (the
// entry points: restarts, Lloyd from given bases, seeds only).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "ks_assign.hpp"
#include "ks_lloyd.hpp"
#include "ks_problem.hpp"
#include "ks_seed.hpp"
#include "parallel.hpp"
#include "rng.hpp"
#include "sym_eigen.hpp"

namespace lpfast {
namespace ks {

// Lloyd from given bases (k of them, d x j).
template <class T>
Fit lloyd_from(const Data<T>& data, const Options& opt, std::vector<MatD> V) {
  check_options(data.n, data.d, opt);
  for (auto& Vc : V) Vc = orthonormal_columns(Vc);
  Fit f = Lloyd<T>(data, opt).run(std::move(V));
  canonical_signs(f.V);
  return f;
}

// n_init restarts of seeding + Lloyd, the best kept (lowest cost; ties: lowest restart).
// Restarts run in parallel (one per thread); each kernel inside then runs on its thread.
template <class T>
Fit fit_restarts(const Data<T>& data, const Options& opt, Seeding how, int n_init,
                 std::uint64_t seed) {
  check_options(data.n, data.d, opt);
  if (n_init < 1) throw std::invalid_argument("n_init: expected >= 1");
  std::vector<Fit> fits(n_init);
  const double work = static_cast<double>(data.n) * data.d * opt.k * opt.j;
  const int nt = std::min(n_init, threads_for(work * n_init, 1.0e6));
  parallel_for_dynamic(nt, n_init, [&](std::int64_t r) {
    Rng rng(seed, static_cast<std::uint64_t>(r));
    fits[r] = Lloyd<T>(data, opt).run(seed_bases(data, opt, how, rng));
    fits[r].restart = static_cast<int>(r);
  });
  int best = 0;
  for (int r = 1; r < n_init; ++r)
    if (fits[r].cost < fits[best].cost) best = r;
  Fit f = std::move(fits[best]);
  canonical_signs(f.V);
  return f;
}

// Seed bases only (stream `stream` of `seed`), for coreset pilots and tests.
template <class T>
std::vector<MatD> seed_only(const Data<T>& data, const Options& opt, Seeding how,
                            std::uint64_t seed, std::uint64_t stream) {
  check_options(data.n, data.d, opt);
  Rng rng(seed, stream);
  return seed_bases(data, opt, how, rng);
}

}  // namespace ks
}  // namespace lpfast
