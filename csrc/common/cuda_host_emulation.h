// Host emulation of the CUDA execution model, so that the real __global__ functions of the kernel
// headers (csrc/*/*_kernels.cuh) compile with a host compiler and run on the CPU: CI has no GPU,
// and this is what checks the kernels there (csrc/emulation, tests/test_cuda_emulated.py).
//
// A launch runs its blocks one after another, on the calling thread. Each CUDA thread of a block
// is a fiber (a ucontext with its own stack), and exactly one runs at a time: thread 0 runs until
// its first __syncthreads() (or its end), then thread 1, ..., then the last thread, and then thread
// 0 continues past the barrier, and so on. The order is fixed, so a kernel that is wrong fails the
// same way every run:
//   - a missing barrier between writing shared memory and reading it makes thread 0 read what the
//     other threads have not written yet: shared memory is filled with NaN bytes before each block;
//   - a missing barrier between reading shared memory and overwriting it makes thread 0 overwrite
//     what the later threads still have to read;
//   - a __syncthreads() that not every thread of the block reaches the same number of times (a
//     barrier in divergent code) is reported as an error of the launch.
// blockIdx/threadIdx/blockDim/gridDim are thread-local variables; atomicAdd is std::atomic_ref;
// the device intrinsics the kernels use have their host meaning. Static __shared__ arrays are not
// supported (the kernels use dynamic shared memory: jdrl::cuda::dynamic_shared).
#pragma once

#if defined(__CUDACC__)
#error "cuda_host_emulation.h is for host compilers; nvcc compiles the kernels for the device"
#endif

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace jdrl {
namespace emulation {

// One launch: the fibers of a block, and what each has done in the current block.
class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t shared_bytes)
      : grid_(grid),
        block_(block),
        threads_(static_cast<int>(block.x * block.y * block.z)),
        shared_bytes_(shared_bytes),
        // doubles: aligned for any element type the kernels use
        shared_(new double[(shared_bytes + sizeof(double) - 1) / sizeof(double) + 1]),
        fibers_(threads_) {}

  template <typename Body>
  void run(const Body& body) {
    body_ = &body;
    call_body_ = [](const void* callable) { (*static_cast<const Body*>(callable))(); };
    std::vector<std::unique_ptr<char[]>>& stacks = stack_pool();
    while (static_cast<int>(stacks.size()) < threads_) stacks.emplace_back(new char[kStackBytes]);
    Launch* const outer = current_launch();
    current_launch() = this;
    blockDim = block_;
    gridDim = grid_;
    for (unsigned int bz = 0; bz < grid_.z && error_.empty(); ++bz) {
      for (unsigned int by = 0; by < grid_.y && error_.empty(); ++by) {
        for (unsigned int bx = 0; bx < grid_.x && error_.empty(); ++bx) {
          blockIdx = {bx, by, bz};
          run_block(stacks);
        }
      }
    }
    current_launch() = outer;
    if (!error_.empty()) throw std::runtime_error("emulated CUDA launch: " + error_);
  }

  // __syncthreads(): back to the scheduler, which resumes the next thread.
  void barrier() {
    Fiber& fiber = fibers_[current_thread_];
    ++fiber.barriers;
    swapcontext(&fiber.context, &scheduler_);
  }

  unsigned char* shared_memory() { return reinterpret_cast<unsigned char*>(shared_.get()); }

  static Launch*& current_launch() {
    static thread_local Launch* launch = nullptr;
    return launch;
  }

 private:
  static constexpr size_t kStackBytes = 256 * 1024;

  struct Fiber {
    ucontext_t context;
    bool finished = false;
    long barriers = 0;
  };

  static std::vector<std::unique_ptr<char[]>>& stack_pool() {
    static thread_local std::vector<std::unique_ptr<char[]>> pool;
    return pool;
  }

  static void entry() {
    Launch& launch = *current_launch();
    try {
      launch.call_body_(launch.body_);
    } catch (const std::exception& e) {
      launch.fail(e.what());
    } catch (...) {
      launch.fail("unknown exception in a kernel");
    }
    launch.fibers_[launch.current_thread_].finished = true;
    // returning resumes uc_link: the scheduler
  }

  void run_block(std::vector<std::unique_ptr<char[]>>& stacks) {
    std::memset(shared_.get(), 0xFF, shared_bytes_);  // NaN in every float and double
    for (int t = 0; t < threads_; ++t) {
      Fiber& fiber = fibers_[t];
      fiber.finished = false;
      fiber.barriers = 0;
      getcontext(&fiber.context);
      fiber.context.uc_stack.ss_sp = stacks[t].get();
      fiber.context.uc_stack.ss_size = kStackBytes;
      fiber.context.uc_link = &scheduler_;
      makecontext(&fiber.context, &Launch::entry, 0);
    }
    // Rounds: every unfinished thread in order runs to its next barrier or its end.
    for (bool running = true; running;) {
      running = false;
      for (int t = 0; t < threads_; ++t) {
        if (fibers_[t].finished) continue;
        current_thread_ = t;
        const unsigned int u = static_cast<unsigned int>(t);
        threadIdx = {u % block_.x, (u / block_.x) % block_.y, u / (block_.x * block_.y)};
        swapcontext(&scheduler_, &fibers_[t].context);
        running = running || !fibers_[t].finished;
      }
    }
    for (int t = 1; t < threads_; ++t) {
      if (fibers_[t].barriers != fibers_[0].barriers) {
        fail("__syncthreads() reached " + std::to_string(fibers_[0].barriers) + " times by thread 0 but " +
             std::to_string(fibers_[t].barriers) + " times by thread " + std::to_string(t) + " of block (" +
             std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + ")");
        break;
      }
    }
  }

  void fail(const std::string& message) {
    if (error_.empty()) error_ = message;
  }

  dim3 grid_, block_;
  int threads_;
  size_t shared_bytes_;
  std::unique_ptr<double[]> shared_;
  std::vector<Fiber> fibers_;
  ucontext_t scheduler_;
  int current_thread_ = 0;
  const void* body_ = nullptr;
  void (*call_body_)(const void*) = nullptr;
  std::string error_;
};

inline unsigned char* current_shared_memory() { return Launch::current_launch()->shared_memory(); }

// kernel<<<grid, block, shared_bytes>>>(...) as launch(grid, block, shared_bytes, [&] { kernel(...); }).
template <typename Body>
void launch(dim3 grid, dim3 block, size_t shared_bytes, const Body& body) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x * block.y * block.z == 0) {
    throw std::invalid_argument("emulated CUDA launch: empty grid or block");
  }
  if (block.x * block.y * block.z > 1024) throw std::invalid_argument("emulated CUDA launch: over 1024 threads per block");
  Launch(grid, block, shared_bytes).run(body);
}

}  // namespace emulation
}  // namespace jdrl

inline void __syncthreads() { jdrl::emulation::Launch::current_launch()->barrier(); }

template <typename T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
inline T __ldg(const T* address) {
  return *address;
}

inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
