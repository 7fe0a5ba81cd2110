// common.h: the includes, the Tensor alias and the small helpers every other file uses.
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <dlfcn.h>
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

template <typename T>
const T* ptr_or_null(const std::optional<Tensor>& w) {
  return (w.has_value() && w->defined()) ? w->data_ptr<T>() : nullptr;
}

// Grain so that small batches stay on one thread: parallel_for costs more than it saves
// below a few tens of thousands of elements per step.
inline int64_t grain_rows(int64_t H) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, 4 * H));
}

}  // namespace
