// The one random generator of the core: xoshiro256** seeded through splitmix64, with
// independent streams (restart r of a fit draws from stream r of the seed). Portable: the
// same numbers on every platform and compiler, so results are reproducible for a seed.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace lpfast {

inline std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Rng {
 public:
  // Stream `stream` of `seed`: independent generators for restarts 0, 1, ...
  explicit Rng(std::uint64_t seed, std::uint64_t stream = 0) {
    std::uint64_t x = seed;
    std::uint64_t mix = splitmix64(x) ^ (stream * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull);
    for (auto& s : s_) s = splitmix64(mix);
  }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  // Standard normal by Box-Muller, one value per call (simple beats fast here); the uniform
  // is shifted by half a step into (0, 1) so that its logarithm is finite.
  double normal() {
    const double u = (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53;
    const double v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

// Index drawn with probability proportional to score (non-negative); -1 if all are zero.
inline std::int64_t sample_index(const std::vector<double>& score, Rng& rng) {
  double total = 0;
  for (double s : score) total += s;
  if (!(total > 0) || !std::isfinite(total)) return -1;
  const double u = rng.uniform() * total;
  double acc = 0;
  std::int64_t last = -1;
  for (std::size_t i = 0; i < score.size(); ++i) {
    if (score[i] <= 0) continue;
    acc += score[i];
    last = static_cast<std::int64_t>(i);
    if (u < acc) return last;
  }
  return last;  // rounding: u landed past the last partial sum
}

}  // namespace lpfast
