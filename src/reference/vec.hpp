// Inner loops of the reference. `omp simd` (enabled by -fopenmp-simd, no OpenMP runtime) lets the
// compiler vectorise the reductions without -ffast-math elsewhere.
#pragma once

namespace fsa::ref {

template <class T>
inline T dot(const T* a, const T* b, int n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y += alpha * x
template <class T>
inline void axpy(T alpha, const T* x, T* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace fsa::ref
