// pool.h: the buffer pool for large per-call buffers (saved gates, cell states, gate gradients).
// pooled_empty(sizes, options): an uninitialised tensor of any shape, from a pooled block.
// Included once, by ops.cpp (one translation unit; see there).
#pragma once

namespace {

// Buffer pool for the large per-call buffers (saved gates and cell states, gate gradients,
// dH). glibc serves an allocation over its mmap threshold (at most 32 MiB) with fresh mmap'd
// pages on every call, and faulting them in was ~23% of an S4 training step (perf, AMD EPYC).
// Buffers of at least kPoolMinBytes come from here instead: a tensor's deleter returns its
// block, and the next call of the same size (rounded up to 64 KiB; or up to 1/8 larger) takes
// it back with its pages already mapped. The pool keeps at most the pool_mb knob's MiB
// (default 1024; 0 turns it off) of free blocks, more are freed at once; release_pool()
// (peephole_lstm.release_buffers() in Python) frees them all. A leaked singleton: tensors
// may outlive static destruction.
class BufferPool {
 public:
  static BufferPool& get() {
    static BufferPool* p = new BufferPool();
    return *p;
  }

  Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opt) {
    int64_t numel = 1;
    for (int64_t d : sizes) numel *= d;
    const size_t want = size_t(numel) * c10::elementSize(c10::typeMetaToScalarType(opt.dtype()));
    if (want < kPoolMinBytes || cap() == 0) return at::empty(sizes, opt);
    size_t bytes = (want + kRound - 1) / kRound * kRound;
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 8) {
        bytes = it->first;
        ptr = it->second;
        cached_ -= bytes;
        free_.erase(it);
      }
    }
    if (ptr == nullptr) {
      ptr = std::aligned_alloc(kAlign, bytes);
      TORCH_CHECK(ptr != nullptr, "peephole_lstm: out of memory allocating ", bytes, " bytes");
    }
    return at::from_blob(ptr, sizes, [bytes](void* q) { BufferPool::get().put(q, bytes); }, opt);
  }

  void put(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= cap()) {
        free_.emplace(bytes, ptr);
        cached_ += bytes;
        return;
      }
    }
    std::free(ptr);
  }

  int64_t release() {
    std::multimap<size_t, void*> blocks;
    size_t bytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      bytes = cached_;
      cached_ = 0;
    }
    for (auto& b : blocks) std::free(b.second);
    return int64_t(bytes);
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return int64_t(cached_);
  }

 private:
  BufferPool() = default;
  static size_t cap() { return size_t(knobs().pool_bytes.load(std::memory_order_relaxed)); }
  static constexpr size_t kPoolMinBytes = size_t(4) << 20;
  static constexpr size_t kRound = size_t(64) << 10;
  static constexpr size_t kAlign = 64;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // size -> block
  size_t cached_ = 0;
};

inline Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  return BufferPool::get().empty(sizes, opt);
}

}  // namespace
