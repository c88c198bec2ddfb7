// Inference of a multi-layer LSTM whose gate matrices are doped Kronecker operators
// W = sum_r kron(A_r, B_r) + S (doped_kron.hpp's convention), for a server that generates
// token by token and keeps the state (h, c) itself.
//
// Math and gate order are torch.nn.LSTM's: for layer l with input x and state (h, c),
//   z = W_ih x + W_hh h + bias   (4H rows: [i, f, g, o]),
//   i, f, o = sigmoid, g = tanh,  c' = f * c + i * g,  h' = o * tanh(c'),
// and layer l + 1 reads layer l's h'. h, c are (num_layers, batch, H); sequences batch-first.
//
// How a call runs: the batch is split into blocks of rows; each block goes through all
// layers and all steps on one thread (rows of the batch are independent, so blocks need no
// barrier). Within a block, time runs in chunks of up to kChunkRows / rows steps, layer by
// layer: the input products W_ih x of a chunk's steps are one batched product (one Kronecker
// GEMM over all of them, S's non-zeros read once per 4-32 rows), and the loop over steps
// then needs only W_hh h. A single step is a chunk of length 1. All scratch is allocated
// once per call and per block, never per step.
//
// The sparse part: one row of input (batch 1, the latency-bound call) goes through S in
// the SELL-16 layout (sell.hpp, built once by the constructor); several rows through CSR
// with the rows transposed so that each non-zero is one contiguous FMA (csr.hpp).
//
// Activations: float32 uses Eigen's vectorized tanh (a rational approximation) and
// sigmoid = 1 / (1 + exp(-x)) with Eigen's vectorized exp; float64 has no vectorized tanh in
// Eigen 3.4, so tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|), with the odd Taylor
// polynomial to x^11 for |x| < 0.05 where 1 - e would cancel. Against std:: in long double
// on 20000 normal draws (scale 1 and 10) plus 0, tiny, +-0.05, large and infinite inputs
// (test_lstm_activations in cpp/tests/test_core.cpp, which holds sigmoid to 1 eps, tanh to
// 2 eps absolute and 6 eps relative): sigmoid abs error 0.72 eps (float32) / 0.73 eps
// (float64); tanh abs 1.9 / 0.77 eps, relative 2.2 / 3.5 eps.
//
// Thread-safety: a DopedLstm is immutable after construction; every call allocates its own
// scratch, so concurrent calls from several threads are safe.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "csr.hpp"
#include "doped_kron.hpp"
#include "parallel.hpp"
#include "sell.hpp"
#include "small_gemm.hpp"
#include "types.hpp"

namespace lpfast {

// One gate matrix W (rows, cols) = sum_r kron(A_r, B_r) + S, as views over caller-owned
// buffers. kp.Bt is ignored (the runtime keeps its own transposed B); S.indptr == nullptr
// means no doping.
template <class T>
struct DopedGateMatrix {
  KronFactors<T> kp;
  CsrView<T, std::int32_t> S;
};

// One LSTM layer: W_ih (4H, input), W_hh (4H, H) and bias (4H) = b_ih + b_hh (may be null).
template <class T>
struct DopedLstmLayer {
  DopedGateMatrix<T> ih, hh;
  const T* bias = nullptr;
};

namespace detail {

template <class T>
using ArrMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;

// Activations work on aligned fixed-size blocks only: Eigen evaluates a map of unknown
// alignment with scalar code up to the first aligned element and packets after it, and the
// scalar and packet versions of exp/tanh differ in the last bit, so results depended on
// where malloc put the scratch (they differed between Python threads). Here every element
// takes the packet path whatever its address.
inline constexpr std::int64_t kCellBlock = 32;
template <class T>
using CellBlock = Eigen::Array<T, kCellBlock, 1>;

template <class T>
inline CellBlock<T> sigmoid_block(const CellBlock<T>& a) {
  return T(1) / (T(1) + (-a).exp());
}

template <class T>
inline CellBlock<T> tanh_block(const CellBlock<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.tanh();
  } else {
    const CellBlock<T> ax = x.abs();
    const CellBlock<T> e = (T(-2) * ax).exp();
    const CellBlock<T> big = (T(1) - e) / (T(1) + e);
    const CellBlock<T> x2 = x * x;
    // tanh x = x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 - 1382x^11/155925 + ...
    const CellBlock<T> small =
        x * (T(1) + x2 * (T(-1.0 / 3) + x2 * (T(2.0 / 15) + x2 * (T(-17.0 / 315) +
             x2 * (T(62.0 / 2835) + x2 * T(-1382.0 / 155925))))));
    const CellBlock<T> signed_big = (x < T(0)).select(-big, big);
    return (ax < T(0.05)).select(small, signed_big);
  }
}

// len <= kCellBlock entries of p into an aligned block, zero-padded.
template <class T>
inline void load_block(CellBlock<T>& b, const T* p, std::int64_t len) {
  std::copy(p, p + len, b.data());
  std::fill(b.data() + len, b.data() + kCellBlock, T(0));
}

template <class T, class F>
inline void map_blocks(T* z, std::int64_t n, F&& f) {
  CellBlock<T> b;
  for (std::int64_t i = 0; i < n; i += kCellBlock) {
    const std::int64_t len = std::min(kCellBlock, n - i);
    load_block(b, z + i, len);
    b = f(b);
    std::copy(b.data(), b.data() + len, z + i);
  }
}

// In-place sigmoid / tanh of n entries (the cell's own functions, for tests and callers).
template <class T>
inline void sigmoid_inplace(T* z, std::int64_t n) {
  map_blocks(z, n, [](const CellBlock<T>& b) { return sigmoid_block<T>(b); });
}

template <class T>
inline void tanh_inplace(T* z, std::int64_t n) {
  map_blocks(z, n, [](const CellBlock<T>& b) { return tanh_block<T>(b); });
}

// One LSTM cell over one row: z (4H pre-activations [i, f, g, o]), c (H) the previous cell
// state; writes c_out and h_out (H each; c_out may be c).
template <class T>
inline void lstm_cell(const T* z, const T* c, T* c_out, T* h_out, std::int64_t H) {
  CellBlock<T> i, f, g, o, cc;
  for (std::int64_t j = 0; j < H; j += kCellBlock) {
    const std::int64_t len = std::min(kCellBlock, H - j);
    load_block(i, z + j, len);
    load_block(f, z + H + j, len);
    load_block(g, z + 2 * H + j, len);
    load_block(o, z + 3 * H + j, len);
    load_block(cc, c + j, len);
    cc = sigmoid_block<T>(f) * cc + sigmoid_block<T>(i) * tanh_block<T>(g);
    const CellBlock<T> h = sigmoid_block<T>(o) * tanh_block<T>(cc);
    std::copy(cc.data(), cc.data() + len, c_out + j);
    std::copy(h.data(), h.data() + len, h_out + j);
  }
}

// The serving form of one gate matrix: the views plus B transposed and S in the SELL-16
// layout, both owned (built once).
template <class T>
struct PreparedGate {
  KronFactors<T> kp;  // Bt points into bt
  CsrView<T, std::int32_t> S;
  bool doped = false;
  std::vector<T> bt;
  std::vector<std::int64_t> slice_ptr;
  std::vector<std::int32_t> row_of;
  std::vector<std::uint16_t> idx16;  // SELL column indices when cols <= 65536
  std::vector<std::int32_t> idx32;   // else
  std::vector<T> sell_data;
  SellView<T, std::uint16_t> sell16;
  SellView<T, std::int32_t> sell32;

  std::int64_t rows() const { return kp.rows(); }
  std::int64_t cols() const { return kp.cols(); }
  std::int64_t nnz() const { return doped ? S.nnz() : 0; }
};

template <class T>
void prepare_gate(const DopedGateMatrix<T>& g, PreparedGate<T>& p, const std::string& name) {
  const KronFactors<T>& kp = g.kp;
  if (kp.A == nullptr || kp.B == nullptr) throw std::invalid_argument(name + ": A and B are required");
  if (kp.rank < 1) throw std::invalid_argument(name + ": Kronecker rank must be at least 1");
  if (kp.m1 < 1 || kp.n1 < 1 || kp.m2 < 1 || kp.n2 < 1)
    throw std::invalid_argument(name + ": factor shapes must be positive");
  p.kp = kp;
  p.bt.resize(static_cast<std::size_t>(kp.rank * kp.m2 * kp.n2));
  for (std::int64_t r = 0; r < kp.rank; ++r) {
    const ConstRowMap<T> b(kp.B + r * kp.m2 * kp.n2, kp.m2, kp.n2);
    RowMap<T>(p.bt.data() + r * kp.m2 * kp.n2, kp.n2, kp.m2) = b.transpose();
  }
  p.kp.Bt = p.bt.data();
  p.doped = g.S.indptr != nullptr;
  if (!p.doped) return;
  if (g.S.rows != kp.rows() || g.S.cols != kp.cols()) {
    throw std::invalid_argument(name + ": S has shape (" + std::to_string(g.S.rows) + ", " +
                                std::to_string(g.S.cols) + "), expected (" +
                                std::to_string(kp.rows()) + ", " + std::to_string(kp.cols()) +
                                ") = kron(A, B)'s");
  }
  check_csr(g.S.indptr, g.S.rows + 1, g.S.indices, g.S.nnz(), g.S.rows, g.S.cols, name + ".S");
  p.S = g.S;
  const std::int64_t slices = sell_slices(p.S.rows);
  p.slice_ptr.resize(static_cast<std::size_t>(slices + 1));
  p.row_of.resize(static_cast<std::size_t>(slices * kSellC));
  sell_structure(p.S.indptr, p.S.rows, p.row_of.data(), p.slice_ptr.data());
  const auto stored = static_cast<std::size_t>(p.slice_ptr[static_cast<std::size_t>(slices)]);
  p.sell_data.resize(stored);
  if (p.S.cols <= 65536) {
    p.idx16.resize(stored);
    sell_fill(p.S, p.row_of.data(), p.slice_ptr.data(), p.idx16.data(), p.sell_data.data());
    p.sell16 = {p.slice_ptr.data(), p.row_of.data(), p.idx16.data(), p.sell_data.data(),
                p.S.rows, p.S.cols, slices};
  } else {
    p.idx32.resize(stored);
    sell_fill(p.S, p.row_of.data(), p.slice_ptr.data(), p.idx32.data(), p.sell_data.data());
    p.sell32 = {p.slice_ptr.data(), p.row_of.data(), p.idx32.data(), p.sell_data.data(),
                p.S.rows, p.S.cols, slices};
  }
}

// Scratch of one thread's block of rows.
template <class T>
struct LstmScratch {
  std::vector<T> t;                                   // X B_r^T of up to kChunkRows rows
  std::vector<T, Eigen::aligned_allocator<T>> xt;     // up to 32 rows transposed for CSR
};

template <int WIDTH, class T>
void csr_rows_batched(const CsrView<T, std::int32_t>& S, const T* x, std::int64_t nrows, T* y,
                      LstmScratch<T>& ws) {
  const std::int64_t n = S.cols, m = S.rows;
  for (std::int64_t b0 = 0; b0 < nrows; b0 += WIDTH) {
    const std::int64_t nb = std::min<std::int64_t>(WIDTH, nrows - b0);
    // Transposed in tiles of 16 columns, as doped_kron.hpp does (strided reads thrash L1).
    constexpr std::int64_t kTile = 16;
    for (std::int64_t jt = 0; jt < n; jt += kTile) {
      const std::int64_t je = std::min(n, jt + kTile);
      for (std::int64_t b = 0; b < nb; ++b) {
        const T* src = x + (b0 + b) * n;
        for (std::int64_t j = jt; j < je; ++j) ws.xt[j * WIDTH + b] = src[j];
      }
      // Lanes past nb are read by the FMAs (their results are dropped): keep them finite.
      for (std::int64_t b = nb; b < WIDTH; ++b)
        for (std::int64_t j = jt; j < je; ++j) ws.xt[j * WIDTH + b] = T(0);
    }
    csr_matmat_add_rows<WIDTH>(S, ws.xt.data(), nb, y + b0 * m, m, 0, m);
  }
}

// y (nrows, rows) = x W^T (accumulate = false) or y += x W^T, for x (nrows, cols), on the
// calling thread alone.
template <class T>
void gate_product(const PreparedGate<T>& g, const T* x, std::int64_t nrows, T* y, bool accumulate,
                  LstmScratch<T>& ws) {
  const KronFactors<T>& kp = g.kp;
  const std::int64_t m = kp.rows();
  for (std::int64_t r = 0; r < kp.rank; ++r) {
    rowmajor_gemm(x, kp.n2, kp.Bt + r * kp.m2 * kp.n2, kp.m2, ws.t.data(), kp.m2, nrows * kp.n1,
                  kp.m2, kp.n2, false);
    const T* a = kp.A + r * kp.m1 * kp.n1;
    for (std::int64_t i = 0; i < nrows; ++i) {
      rowmajor_gemm(a, kp.n1, ws.t.data() + i * kp.n1 * kp.m2, kp.m2, y + i * m, kp.m2, kp.m1,
                    kp.m2, kp.n1, accumulate || r > 0);
    }
  }
  if (!g.doped || g.S.nnz() == 0) return;
  if (nrows == 1) {
    if (!g.idx16.empty())
      sell_matvec(g.sell16, x, y, 0, g.sell16.slices, /*accumulate=*/true);
    else
      sell_matvec(g.sell32, x, y, 0, g.sell32.slices, /*accumulate=*/true);
  } else if (nrows <= 4) {
    csr_rows_batched<4>(g.S, x, nrows, y, ws);
  } else if (nrows <= 8) {
    csr_rows_batched<8>(g.S, x, nrows, y, ws);
  } else if (nrows <= 16) {
    csr_rows_batched<16>(g.S, x, nrows, y, ws);
  } else {
    csr_rows_batched<32>(g.S, x, nrows, y, ws);
  }
}

}  // namespace detail

template <class T>
class DopedLstm {
 public:
  // Rows of one batched input product: chunks of steps are cut so that (rows of the block)
  // x (steps of the chunk) stays at most this (bounds the scratch, keeps it in L2).
  static constexpr std::int64_t kChunkRows = 32;
  // Rows of the batch one thread carries through a call at a time.
  static constexpr std::int64_t kBlockRows = 32;

  // Checks the shapes (every layer's W_hh is (4H, H) with the same H, W_ih (4H, input) with
  // input = H above layer 0) and each S (check_csr), then lays out B^T and SELL copies.
  // The views must outlive this object. Throws std::invalid_argument naming the matrix.
  explicit DopedLstm(const std::vector<DopedLstmLayer<T>>& layers) {
    if (layers.empty()) throw std::invalid_argument("layers: at least one layer is required");
    const std::int64_t rows = layers[0].hh.kp.rows();
    if (rows % 4 != 0) {
      throw std::invalid_argument("layers[0].hh: " + std::to_string(rows) +
                                  " rows, expected 4 * hidden_size");
    }
    H_ = rows / 4;
    input_ = layers[0].ih.kp.cols();
    gates_.resize(2 * layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const std::string at = "layers[" + std::to_string(l) + "]";
      const auto& L = layers[l];
      const std::int64_t in = l == 0 ? input_ : H_;
      auto shape_check = [&](const DopedGateMatrix<T>& g, std::int64_t cols, const char* which) {
        if (g.kp.rows() != 4 * H_ || g.kp.cols() != cols) {
          throw std::invalid_argument(
              at + "." + which + ": kron(A, B) has shape (" + std::to_string(g.kp.rows()) +
              ", " + std::to_string(g.kp.cols()) + "), expected (" + std::to_string(4 * H_) +
              ", " + std::to_string(cols) + ") for hidden_size " + std::to_string(H_));
        }
      };
      shape_check(L.ih, in, "ih");
      shape_check(L.hh, H_, "hh");
      detail::prepare_gate(L.ih, gates_[2 * l], at + ".ih");
      detail::prepare_gate(L.hh, gates_[2 * l + 1], at + ".hh");
      bias_.push_back(L.bias);
      nnz_ += gates_[2 * l].nnz() + gates_[2 * l + 1].nnz();
      for (const auto* g : {&gates_[2 * l], &gates_[2 * l + 1]}) {
        max_t_ = std::max(max_t_, g->kp.n1 * g->kp.m2);
        max_cols_ = std::max(max_cols_, g->cols());
        kron_flops_ += 2.0 * g->kp.rank * g->kp.n1 * g->kp.m2 * (g->kp.n2 + g->kp.m1);
      }
    }
  }

  DopedLstm(const DopedLstm&) = delete;  // the prepared gates point into their own buffers
  DopedLstm& operator=(const DopedLstm&) = delete;

  std::int64_t num_layers() const { return static_cast<std::int64_t>(bias_.size()); }
  std::int64_t input_size() const { return input_; }
  std::int64_t hidden_size() const { return H_; }

  // Bytes of the layouts this object owns (B transposed, S in SELL-16), beyond the views.
  std::int64_t nbytes() const {
    std::int64_t n = 0;
    for (const auto& g : gates_) {
      n += static_cast<std::int64_t>(g.bt.size() * sizeof(T) + g.sell_data.size() * sizeof(T) +
                                     g.slice_ptr.size() * sizeof(std::int64_t) +
                                     g.row_of.size() * sizeof(std::int32_t) +
                                     g.idx16.size() * sizeof(std::uint16_t) +
                                     g.idx32.size() * sizeof(std::int32_t));
    }
    return n;
  }

  // One step: x (batch, input); h, c (num_layers, batch, H); writes y (batch, H) (the top
  // layer's new h), h_out and c_out (num_layers, batch, H). h_out/c_out may be h/c.
  void step(const T* x, std::int64_t batch, const T* h, const T* c, T* y, T* h_out,
            T* c_out) const {
    sequence(x, batch, 1, h, c, y, h_out, c_out);
  }

  // steps steps: xs (batch, steps, input) batch-first; h0, c0 (num_layers, batch, H) or
  // null for zeros; writes ys (batch, steps, H), h_n and c_n (num_layers, batch, H).
  // h_n/c_n may be h0/c0.
  void sequence(const T* xs, std::int64_t batch, std::int64_t steps, const T* h0, const T* c0,
                T* ys, T* h_n, T* c_n) const {
    const std::int64_t L = num_layers(), state = L * batch * H_;
    if (h0 != h_n) {
      if (h0 != nullptr) std::copy(h0, h0 + state, h_n);
      else std::fill(h_n, h_n + state, T(0));
    }
    if (c0 != c_n) {
      if (c0 != nullptr) std::copy(c0, c0 + state, c_n);
      else std::fill(c_n, c_n + state, T(0));
    }
    if (batch == 0 || steps == 0) return;
    // Work per row and step: the Kronecker flops plus ~19 flops per non-zero (doped_kron's
    // measured exchange rate); a block of rows goes to one thread.
    const double per_row = kron_flops_ + 19.0 * static_cast<double>(nnz_) + 30.0 * L * H_;
    const int nt = static_cast<int>(std::min<std::int64_t>(
        threads_for(per_row * static_cast<double>(batch * steps), 2.0e5), batch));
    // One row runs on one thread: splitting its gate matrices over two threads (W_ih x on
    // one, W_hh h on the other, two barriers per layer; `git log -S step_pair`) gave the
    // same bits but ran 2-4x slower on this 2-core machine shared with other jobs (paper
    // size, 25x: 1 thread 238 us median / 107 min, 2 threads 1057 / 223, wall, load ~14):
    // a barrier waits for a descheduled thread. Rows of a batch split without barriers.
    parallel_region(nt, [&](int tid, int team) {
      const auto [b0, b1] = static_range(batch, tid, team);
      for (std::int64_t b = b0; b < b1; b += kBlockRows)
        run_block(xs, batch, steps, b, std::min(b1, b + kBlockRows), ys, h_n, c_n);
    });
  }

 private:
  // Rows [b0, b1) of the batch through all layers and steps, with state in h_n/c_n.
  void run_block(const T* xs, std::int64_t batch, std::int64_t steps, std::int64_t b0,
                 std::int64_t b1, T* ys, T* h_n, T* c_n) const {
    const std::int64_t nb = b1 - b0, H = H_, G = 4 * H, L = num_layers();
    const std::int64_t chunk = std::max<std::int64_t>(1, std::min(steps, kChunkRows / nb));
    const std::int64_t max_rows = nb * chunk;
    detail::LstmScratch<T> ws;
    ws.t.resize(static_cast<std::size_t>(max_rows * max_t_));
    ws.xt.resize(static_cast<std::size_t>(max_cols_ * 32));
    const std::int64_t width = std::max(input_, H);
    std::vector<T> in(static_cast<std::size_t>(max_rows * width));   // a layer's input chunk
    std::vector<T> out(static_cast<std::size_t>(max_rows * H));      // its output chunk
    std::vector<T> pre(static_cast<std::size_t>(max_rows * G));      // W_ih x + bias
    std::vector<T> z(static_cast<std::size_t>(nb * G));              // one step's gates
    for (std::int64_t t0 = 0; t0 < steps; t0 += chunk) {
      const std::int64_t tc = std::min(chunk, steps - t0), rows = nb * tc;
      // Chunk rows are ordered (row of the batch, step), as in xs.
      for (std::int64_t b = 0; b < nb; ++b)
        std::copy(xs + ((b0 + b) * steps + t0) * input_,
                  xs + ((b0 + b) * steps + t0 + tc) * input_, in.data() + b * tc * input_);
      for (std::int64_t l = 0; l < L; ++l) {
        const auto& ih = gates_[static_cast<std::size_t>(2 * l)];
        const auto& hh = gates_[static_cast<std::size_t>(2 * l + 1)];
        detail::gate_product(ih, in.data(), rows, pre.data(), false, ws);
        if (const T* bias = bias_[static_cast<std::size_t>(l)]) {
          for (std::int64_t r = 0; r < rows; ++r) {
            detail::ArrMap<T>(pre.data() + r * G, G) +=
                Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias, G);
          }
        }
        T* hl = h_n + (l * batch + b0) * H;  // (nb, H), contiguous
        T* cl = c_n + (l * batch + b0) * H;
        for (std::int64_t s = 0; s < tc; ++s) {
          // z = W_hh h, then + (W_ih x + bias).
          detail::gate_product(hh, hl, nb, z.data(), false, ws);
          for (std::int64_t b = 0; b < nb; ++b) {
            detail::ArrMap<T>(z.data() + b * G, G) +=
                Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(pre.data() + (b * tc + s) * G, G);
          }
          for (std::int64_t b = 0; b < nb; ++b) {
            detail::lstm_cell(z.data() + b * G, cl + b * H, cl + b * H, hl + b * H, H);
            std::copy(hl + b * H, hl + (b + 1) * H, out.data() + (b * tc + s) * H);
          }
        }
        if (l + 1 < L) std::copy(out.data(), out.data() + rows * H, in.data());
      }
      for (std::int64_t b = 0; b < nb; ++b)
        std::copy(out.data() + b * tc * H, out.data() + (b + 1) * tc * H,
                  ys + ((b0 + b) * steps + t0) * H);
    }
  }

  std::int64_t H_ = 0, input_ = 0, nnz_ = 0, max_t_ = 0, max_cols_ = 0;
  double kron_flops_ = 0.0;
  std::vector<detail::PreparedGate<T>> gates_;  // ih, hh of layer 0, then layer 1, ...
  std::vector<const T*> bias_;
};

}  // namespace lpfast
