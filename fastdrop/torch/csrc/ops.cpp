// fastdrop.torch's per-call path in C++: dropout of CPU tensors, its key drawn from torch's
// generator, its autograd node, and the kernels of fastdrop/include, with no Python or NumPy
// in the call.
//
// Built on first use against the installed torch (fastdrop/torch/_build.py). The same bits,
// errors and semantics as the Python path (fastdrop/torch/_tensors.py): the key is the two
// int64 draws `key.random_(INT64_MIN, INT64_MAX, generator)` makes, read as uint64; the mask
// is docs/mask-stream.md's for that (seed, stream), over the input's elements or, with
// shared_dims (channel dropout), over the mask's own (extent 1 along those axes); the
// constants are the spec's, rounded as fastdrop.kernels.common rounds them. Operators
// (namespace fastdrop_cpp):
//
//   dropout(Tensor input, float p, bool recompute, Generator? generator, int threads,
//           int[] shared_dims, bool alpha) -> Tensor          draws its key (eager calls)
//   dropout_(Tensor(a!) input, ...) -> Tensor(a!)               the same, in place
//   dropout_keyed(Tensor input, float p, int seed, int stream, bool keep_words, int threads,
//                 int[] shared_dims, bool alpha) -> (Tensor, Tensor)   (y, words)
//   dropout_backward(Tensor grad, Tensor words, float p, int threads, int[] shared_dims,
//                    bool alpha) -> Tensor
//   dropout_backward_recompute(Tensor grad, float p, int seed, int stream, int threads,
//                              int[] shared_dims, bool alpha) -> Tensor
//   dropout_backward_(Tensor(a!) grad, ...) and dropout_backward_recompute_(...)   in place,
//                 where a node's backward owns its gradient
//   draw_key(Tensor like) -> Tensor                 compiled graphs: the key, an op of its own,
//   dropout_of_key(Tensor input, float p, Tensor key, int threads, int[] shared_dims,
//                  bool alpha) -> (Tensor, Tensor)  dropout from that key tensor,
//   dropout_backward_of_words(Tensor grad, Tensor words, float p, int threads,
//                             int[] shared_dims, bool alpha, Tensor? input) -> Tensor
//
// threads: fastdrop's own thread count where the user chose one, else 0 (torch's).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <pthread.h>
#include <sys/mman.h>
#include <torch/extension.h>
#include <torch/library.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "fastdrop/dropout.h"
#include "fastdrop/variants.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kMinElementsPerThread = int64_t{1} << 17;  // fastdrop._config's
constexpr size_t kHugePage = size_t{1} << 21;

struct Key {
  uint64_t seed, stream;
};

// A call's (seed, stream): what `torch.empty(2, dtype=torch.int64).random_(INT64_MIN, INT64_MAX,
// generator=generator)` draws (ATen's random_from_to for a range of 2^64 - 1 from base
// INT64_MIN: random64() % range + base, one draw per element, under the generator's lock),
// read as uint64 as fastdrop.torch._tensors.key_values reads it.
Key draw_key(const std::optional<at::Generator>& generator) {
  auto* source = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  constexpr uint64_t range = ~uint64_t{0};
  constexpr uint64_t base = uint64_t{1} << 63;
  std::lock_guard<std::mutex> lock(source->mutex_);
  const uint64_t seed = source->random64() % range + base;
  const uint64_t stream = source->random64() % range + base;
  return {seed, stream};
}

// A float64 rounded once to `bits` significant bits, to nearest even (a carry into the
// exponent is right): float16 keeps 11, bfloat16 8. For values in the target's normal
// range (and 0); float16's subnormals are rounded apart (to_half).
double round_significand(double value, int bits) {
  uint64_t pattern;
  std::memcpy(&pattern, &value, sizeof pattern);
  const int dropped = 53 - bits;
  const uint64_t rest = pattern & ((uint64_t{1} << dropped) - 1);
  const uint64_t half = uint64_t{1} << (dropped - 1);
  pattern >>= dropped;
  if (rest > half || (rest == half && (pattern & 1)))
    ++pattern;
  pattern <<= dropped;
  std::memcpy(&value, &pattern, sizeof value);
  return value;
}

// float64 -> float16 -> float, rounded once as NumPy's np.float16(value) rounds (2^16 and up
// is inf): subnormals to a multiple of 2^-24 (nearbyint rounds to even).
float to_half(double value) {
  if (std::fabs(value) < 0x1p-14)
    return static_cast<float>(std::nearbyint(value * 0x1p24) * 0x1p-24);
  return fd_half_to_float(fd_float_to_half(static_cast<float>(round_significand(value, 11))));
}

// float64 -> bfloat16 -> float, rounded once (fastdrop.maskstream.spec.round_to_bfloat16;
// no constant here is in bfloat16's subnormal range).
float to_bfloat16(double value) { return static_cast<float>(round_significand(value, 8)); }

float to_float(double value) { return static_cast<float>(value); }
double to_double(double value) { return value; }

// The kernels of one element type T: S is the type they take constants in (float for
// float16 and bfloat16), Op their mask operation, round(v) a float64 constant rounded to
// T and held in S (fastdrop.kernels.common.kernel_scale).
template <typename T, typename S, typename Op>
struct Kernels {
  using Element = T;
  using Scale = S;
  using MaskOp = Op;
  void (*dropout)(const T*, T*, uint64_t*, S, const fd_mask_params*, int64_t, int64_t);
  void (*apply)(const T*, T*, const uint64_t*, S, int64_t, int64_t, int64_t);
  void (*broadcast)(const T*, T*, const uint64_t*, const fd_broadcast_layout*, const Op*, int64_t,
                    int64_t);
  S (*round)(double);
};

template <typename Body>
void with_kernels(at::ScalarType type, Body&& body) {
  switch (type) {
    case at::kDouble:
      body(Kernels<double, double, fd_mask_op_f64>{fd_dropout_range_f64, fd_apply_mask_range_f64,
                                                    fd_apply_broadcast_range_f64, to_double});
      return;
    case at::kFloat:
      body(Kernels<float, float, fd_mask_op_f32>{fd_dropout_range_f32, fd_apply_mask_range_f32,
                                                  fd_apply_broadcast_range_f32, to_float});
      return;
    case at::kHalf:
      body(Kernels<uint16_t, float, fd_mask_op_f16>{
          fd_dropout_range_f16, fd_apply_mask_range_f16, fd_apply_broadcast_range_f16, to_half});
      return;
    case at::kBFloat16:
      body(Kernels<fd_bfloat16, float, fd_mask_op_bf16>{fd_dropout_range_bf16,
                                                         fd_apply_mask_range_bf16,
                                                         fd_apply_broadcast_range_bf16,
                                                         to_bfloat16});
      return;
    default:
      TORCH_CHECK_TYPE(false, "fastdrop: no kernel for ", type);
  }
}

// How many ranges n elements are split into: one below two threads' worth of elements,
// else one per thread of at least 2^17 elements each (as the Cython kernels split them;
// the bits never depend on the split).
int64_t chunk_count(int64_t n, int64_t threads) {
  if (n < 2 * kMinElementsPerThread)
    return 1;
  return std::max<int64_t>(1, std::min<int64_t>(threads > 0 ? threads : at::get_num_threads(),
                                                n / kMinElementsPerThread));
}

// range(first, stop) over [0, total) in `chunks` near-equal ranges, on torch's threads.
template <typename Range>
void over_chunks(int64_t total, int64_t chunks, Range&& range) {
  if (chunks == 1) {
    range(0, total);
    return;
  }
  const int64_t step = (total + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk)
      range(std::min(chunk * step, total), std::min((chunk + 1) * step, total));
  });
}

// range(first, stop) over the mask words of n elements, threads owning whole words.
template <typename Range>
void over_words(int64_t n, int64_t threads, Range&& range) {
  over_chunks(fd_words_for(n), chunk_count(n, threads), range);
}

// Huge pages for a large new result, as NumPy asks for its arrays: fresh 4 KiB pages
// each cost a page fault when first written.
void advise_huge_pages(const at::Tensor& tensor) {
  const size_t bytes = tensor.nbytes();
  if (bytes < 2 * kHugePage)
    return;
  const auto start = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  const uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (start + bytes) & ~(kHugePage - 1);
  if (end > aligned)
    madvise(reinterpret_cast<void*>(aligned), end - aligned, MADV_HUGEPAGE);
}

// Memory of large results, kept for the next result of its size. A training step makes
// tensors of the same sizes every step, and a new tensor of a few MiB costs a page fault for
// each 4 KiB page written (microseconds each on a virtual machine: more than the dropout
// kernel); malloc hands such blocks back to the system when they are freed. Results of at
// least 1 MiB come from 2 MiB-aligned blocks (huge pages advised), and a freed block waits
// for the next result of its rounded size, up to FASTDROP_TORCH_CACHE_MB MiB of waiting
// blocks (default 256; 0: no cache, torch's allocator). docs/torch.md, Speed.
class ResultCache final : public c10::Allocator {
 public:
  static constexpr size_t kSmallest = size_t{1} << 20;

  static ResultCache& get() {
    static ResultCache* cache = new ResultCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }

  bool on() const { return limit_ > 0; }

  c10::DataPtr allocate(size_t nbytes) override {
    const size_t size = (std::max(nbytes, size_t{1}) + kHugePage - 1) & ~(kHugePage - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);  // a waiting block: one lock, the usual case
      auto waiting = free_.find(size);
      if (waiting != free_.end() && !waiting->second.empty()) {
        void* block = waiting->second.back();
        waiting->second.pop_back();
        waiting_ -= size;
        sizes_[block] = size;
        return {block, block, &release, at::Device(at::kCPU)};
      }
    }
    void* block = std::aligned_alloc(kHugePage, size);
    TORCH_CHECK(block != nullptr, "fastdrop: out of memory allocating ", size, " bytes");
    madvise(block, size, MADV_HUGEPAGE);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[block] = size;
    }
    return {block, block, &release, at::Device(at::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  ResultCache() {
    const char* setting = std::getenv("FASTDROP_TORCH_CACHE_MB");
    long megabytes = 256;
    if (setting != nullptr && *setting != '\0') {
      char* end = nullptr;
      megabytes = std::strtol(setting, &end, 10);
      TORCH_CHECK(end != setting && *end == '\0' && megabytes >= 0,
                  "fastdrop: FASTDROP_TORCH_CACHE_MB must be a whole number of MiB, 0 or more, "
                  "got '", setting, "'");
    }
    limit_ = static_cast<size_t>(megabytes) << 20;
    // a child forked while another thread held the lock (DataLoader workers) gets a free one
    pthread_atfork(nullptr, nullptr, [] { new (&get().mutex_) std::mutex(); });
  }

  static void release(void* block) { get().give_back(block); }

  void give_back(void* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto entry = sizes_.find(block);
    const size_t size = entry->second;
    sizes_.erase(entry);
    if (waiting_ + size <= limit_) {
      free_[size].push_back(block);
      waiting_ += size;
    } else {
      std::free(block);
    }
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // by rounded size
  std::unordered_map<void*, size_t> sizes_;              // every block in use
  size_t waiting_ = 0;
  size_t limit_ = 0;
};

// A new result of x's shape, dtype and memory format (torch.empty_like's): large C-ordered
// ones from the ResultCache.
at::Tensor new_like(const at::Tensor& x) {
  auto& cache = ResultCache::get();
  if (cache.on() && x.nbytes() >= ResultCache::kSmallest && x.is_contiguous()) {
    c10::Storage storage(c10::Storage::use_byte_size_t(), x.nbytes(), &cache, /*resizable=*/true);
    at::Tensor result = at::detail::make_tensor<c10::TensorImpl>(
        std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU), x.dtype());
    result.unsafeGetTensorImpl()->set_sizes_contiguous(x.sizes());
    return result;
  }
  at::Tensor result = at::empty_like(x);
  advise_huge_pages(result);
  return result;
}

// What a call does to each element: dropout (shared_dims empty, not alpha: the fused
// kernels), or a stored mask stretched over the input (channel dropout, alpha dropout).
struct Variant {
  double p;
  at::IntArrayRef shared;  // axes along which one keep bit is shared
  bool alpha;

  bool fused() const { return shared.empty() && !alpha; }
};

// Alpha dropout's (a, b, c) in float64, as fastdrop.maskstream.spec computes them.
std::tuple<double, double, double> alpha_constants(double p) {
  constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
  constexpr double kSeluScale = 1.0507009873554804934193349852946;
  constexpr double kDropped = -kSeluScale * kSeluAlpha;
  if (p == 1.0)
    return {0.0, 0.0, 0.0};
  const double a = 1.0 / std::sqrt((1.0 - p) * (1.0 + p * kDropped * kDropped));
  const double b = -a * kDropped * p;
  return {a, b, a * kDropped + b};
}

// s = 1 / (1 - p) in float64 (0 for p = 1): docs/mask-stream.md, section 6. For the
// backward of alpha dropout, a (1 at p = 0, as fastdrop.alpha_dropout_backward takes it).
double dropout_scale(double p) { return p >= 1.0 ? 0.0 : 1.0 / (1.0 - p); }
double backward_scale(const Variant& variant) {
  if (!variant.alpha)
    return dropout_scale(variant.p);
  return variant.p == 0.0 ? 1.0 : std::get<0>(alpha_constants(variant.p));
}

// The mask of an input of `shape`: its element count, and how it covers the input (the
// mask's C-order strides, 0 along the shared axes; a 0-d input is one element).
struct MaskLayout {
  int64_t elements = 1;
  std::vector<int64_t> sizes, strides;
  fd_broadcast_layout view{};

  MaskLayout(at::IntArrayRef shape, at::IntArrayRef shared)
      : sizes(shape.begin(), shape.end()), strides(shape.size(), 0) {
    for (int64_t axis = static_cast<int64_t>(shape.size()) - 1; axis >= 0; --axis) {
      if (std::find(shared.begin(), shared.end(), axis) != shared.end())
        continue;
      strides[axis] = elements;
      elements *= shape[axis];
    }
    if (sizes.empty()) {
      sizes.push_back(1);
      strides.push_back(1);
    }
    view.ndim = static_cast<int>(sizes.size());
    view.sizes = sizes.data();
    view.mask_strides = strides.data();
  }
};

// The mask words of `elements` mask elements for the key, into words.
void mask_words(uint64_t* words, int64_t elements, double p, Key key, int64_t threads) {
  const fd_mask_params params = fd_mask_params_make(key.seed, key.stream, p, 0, elements);
  over_words(elements, threads, [&](int64_t first, int64_t stop) {
    fd_mask_words_range(words, &params, first, stop);
  });
}

// target = source (C-contiguous, same dtype and size; target may be source) with the
// stored mask words stretched over it: kept x * scale (alpha forward: a x + b), dropped
// +0 (alpha forward: c).
void apply_mask(const at::Tensor& source, const at::Tensor& target, const uint64_t* words,
                const Variant& variant, bool forward, int64_t threads) {
  const int64_t n = source.numel();
  if (n == 0)
    return;
  with_kernels(source.scalar_type(), [&](auto kernels) {
    using K = decltype(kernels);
    using T = typename K::Element;
    using S = typename K::Scale;
    const T* from = static_cast<const T*>(source.const_data_ptr());
    T* to = static_cast<T*>(target.data_ptr());
    if (variant.fused()) {
      const S scale = kernels.round(backward_scale(variant));
      over_words(n, threads, [&](int64_t first, int64_t stop) {
        kernels.apply(from, to, words, scale, n, first, stop);
      });
      return;
    }
    typename K::MaskOp op{};
    if (forward && variant.alpha) {  // a and b in the compute type, c rounded to T
      const auto [a, b, c] = alpha_constants(variant.p);
      op = {1, static_cast<S>(a), static_cast<S>(b), static_cast<S>(kernels.round(c))};
    } else {
      op = {0, static_cast<S>(kernels.round(backward_scale(variant))), 0, 0};
    }
    const MaskLayout layout(source.sizes(), variant.shared);
    over_chunks(n, chunk_count(n, threads), [&](int64_t first, int64_t stop) {
      kernels.broadcast(from, to, words, &layout.view, &op, first, stop);
    });
  });
}

// target = dropout of source with the key's mask (the fused kernels: the mask drawn as the
// elements are scaled), the mask's words into words unless it is null.
void stream_into(const at::Tensor& source, const at::Tensor& target, uint64_t* words, double p,
                 Key key, int64_t threads) {
  const int64_t n = source.numel();
  if (n == 0)
    return;
  const fd_mask_params params = fd_mask_params_make(key.seed, key.stream, p, 0, n);
  with_kernels(source.scalar_type(), [&](auto kernels) {
    using T = typename decltype(kernels)::Element;
    const T* from = static_cast<const T*>(source.const_data_ptr());
    T* to = static_cast<T*>(target.data_ptr());
    const auto scale = kernels.round(dropout_scale(p));
    over_words(n, threads, [&](int64_t first, int64_t stop) {
      kernels.dropout(from, to, words, scale, &params, first, stop);
    });
  });
}

// Runs fill(source, target) on C-contiguous memory and returns x's result: a new tensor of
// x's memory format, or x itself in place. Input that is not C-contiguous is computed
// into C-ordered scratch and copied (the mask follows the logical C order of elements).
template <typename Fill>
at::Tensor into_result(const at::Tensor& x, bool inplace, Fill&& fill) {
  const at::Tensor source = x.contiguous();
  if (inplace) {
    if (source.is_same(x)) {
      fill(source, x);
    } else {
      at::Tensor scratch = at::empty_like(source);
      fill(source, scratch);
      x.copy_(scratch);
    }
    return x;
  }
  at::Tensor result = new_like(x);
  if (result.is_contiguous()) {
    fill(source, result);
    return result;
  }
  at::Tensor scratch = at::empty_like(source);
  fill(source, scratch);
  return result.copy_(scratch);
}

void check_input(const at::Tensor& x, const char* where) {
  TORCH_CHECK(x.device().is_cpu(), where, ": fastdrop runs on the CPU, but input is on ",
              x.device(), "; use torch.nn.functional's dropout for tensors on other devices");
  const auto type = x.scalar_type();
  TORCH_CHECK_TYPE(x.layout() == at::kStrided &&
                       (type == at::kHalf || type == at::kFloat || type == at::kDouble ||
                        type == at::kBFloat16),
                   where, ": input must be a dense float16, float32, float64 or bfloat16 tensor");
}

at::Tensor new_words(const at::Tensor& like, int64_t elements) {
  return at::empty({fd_words_for(elements)}, like.options().dtype(at::kLong));
}

uint64_t* word_data(const at::Tensor& words) {
  return reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>());
}

// Dropout of x with the key's mask: (y, words as int64, or undefined unless keep_words),
// y new or x itself.
std::pair<at::Tensor, at::Tensor> dropout_forward(const at::Tensor& x, const Variant& variant,
                                                  Key key, bool keep_words, bool inplace,
                                                  int64_t threads) {
  at::Tensor words;
  if (variant.fused()) {
    if (keep_words)
      words = new_words(x, x.numel());
    uint64_t* bits = keep_words ? word_data(words) : nullptr;
    at::Tensor y = into_result(x, inplace, [&](const at::Tensor& source, const at::Tensor& target) {
      stream_into(source, target, bits, variant.p, key, threads);
    });
    return {y, words};
  }
  const int64_t elements = MaskLayout(x.sizes(), variant.shared).elements;
  words = new_words(x, elements);
  mask_words(word_data(words), elements, variant.p, key, threads);
  at::Tensor y = into_result(x, inplace, [&](const at::Tensor& source, const at::Tensor& target) {
    apply_mask(source, target, word_data(words), variant, true, threads);
  });
  return {y, keep_words ? words : at::Tensor()};
}

at::Tensor backward_from_words(const at::Tensor& grad, const at::Tensor& words,
                               const Variant& variant, int64_t threads, bool inplace = false) {
  const int64_t elements = MaskLayout(grad.sizes(), variant.shared).elements;
  TORCH_CHECK(words.scalar_type() == at::kLong && words.dim() == 1 && words.is_contiguous() &&
                  words.numel() >= fd_words_for(elements),
              "fastdrop: dropout_backward needs the int64 mask words of the forward call");
  const auto* bits = reinterpret_cast<const uint64_t*>(words.const_data_ptr<int64_t>());
  return into_result(grad, inplace, [&](const at::Tensor& source, const at::Tensor& target) {
    apply_mask(source, target, bits, variant, false, threads);
  });
}

at::Tensor backward_recompute(const at::Tensor& grad, const Variant& variant, Key key,
                              int64_t threads, bool inplace = false) {
  if (variant.fused()) {  // dropout's own forward on the gradient, with no words kept
    return into_result(grad, inplace, [&](const at::Tensor& source, const at::Tensor& target) {
      stream_into(source, target, nullptr, variant.p, key, threads);
    });
  }
  const int64_t elements = MaskLayout(grad.sizes(), variant.shared).elements;
  at::Tensor words = new_words(grad, elements);
  mask_words(word_data(words), elements, variant.p, key, threads);
  return backward_from_words(grad, words, variant, threads, inplace);
}

// Whether the backward may write its result into the incoming gradient: only where nothing
// else can see that tensor (this node holds the one reference to it and to its memory: no
// other node, hook or Python name), it is a plain dense CPU tensor (not a view, not fake or
// functional as under tracing), and no graph of the backward is being built. Autograd hands a
// node's gradient over by move, so a gradient made for this node alone (the usual case: the
// next layer's matmul backward) is reused instead of a new tensor of the same size, whose
// fresh pages cost more than the kernel (docs/torch.md, Speed).
bool owned_gradient(const at::Tensor& grad) {
  constexpr auto kTraced = c10::DispatchKeySet({c10::DispatchKey::Python,
                                                c10::DispatchKey::PythonTLSSnapshot,
                                                c10::DispatchKey::Functionalize});
  return !at::GradMode::is_enabled() && grad.defined() && grad.use_count() == 1 &&
         grad.layout() == at::kStrided && grad.device().is_cpu() && !grad.is_view() &&
         grad.is_contiguous() && !grad.is_inference() && grad.has_storage() &&
         grad.storage().use_count() == 1 && (grad.key_set() & kTraced).empty() &&
         grad.storage_offset() == 0;
}

// The in-place call's version bump, as a torch in-place op makes it (not for an inference
// tensor, which has no version counter).
void bump_version(const at::Tensor& x) {
  if (!x.is_inference())
    x.unsafeGetTensorImpl()->bump_version();
}

// ---------------------------------------------------------------- the operators
//
// The Autograd kernels draw the key (the Python path's order: checks, then the draw) and
// reach the computing operators below autograd through the dispatcher, so that fake
// tensors and tracing meet their shape rules (fastdrop/torch/_build.py registers them).

using DropoutKeyed = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, int64_t,
                                                         int64_t, bool, int64_t, at::IntArrayRef,
                                                         bool);
using BackwardFromWordsOp = at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t,
                                       at::IntArrayRef, bool);
using BackwardRecomputeOp = at::Tensor(const at::Tensor&, double, int64_t, int64_t, int64_t,
                                       at::IntArrayRef, bool);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

const c10::TypedOperatorHandle<DropoutKeyed>& keyed_op() {
  static const auto op = find_op<DropoutKeyed>("fastdrop_cpp::dropout_keyed");
  return op;
}

const c10::TypedOperatorHandle<BackwardFromWordsOp>& backward_op() {
  static const auto op = find_op<BackwardFromWordsOp>("fastdrop_cpp::dropout_backward");
  return op;
}

const c10::TypedOperatorHandle<BackwardRecomputeOp>& recompute_op() {
  static const auto op = find_op<BackwardRecomputeOp>("fastdrop_cpp::dropout_backward_recompute");
  return op;
}

using BackwardFromWordsInplaceOp = void(const at::Tensor&, const at::Tensor&, double, int64_t,
                                        at::IntArrayRef, bool);
using BackwardRecomputeInplaceOp = void(const at::Tensor&, double, int64_t, int64_t, int64_t,
                                        at::IntArrayRef, bool);

const c10::TypedOperatorHandle<BackwardFromWordsInplaceOp>& backward_inplace_op() {
  static const auto op = find_op<BackwardFromWordsInplaceOp>("fastdrop_cpp::dropout_backward_");
  return op;
}

const c10::TypedOperatorHandle<BackwardRecomputeInplaceOp>& recompute_inplace_op() {
  static const auto op =
      find_op<BackwardRecomputeInplaceOp>("fastdrop_cpp::dropout_backward_recompute_");
  return op;
}

int64_t as_int(uint64_t value) { return static_cast<int64_t>(value); }
uint64_t as_uint(int64_t value) { return static_cast<uint64_t>(value); }

bool needs_grad(const at::Tensor& tensor) {
  return tensor.requires_grad() && at::GradMode::is_enabled();
}

// What every node keeps of the call besides its tensors: p, threads, shared_dims, alpha.
void save_variant(AutogradContext* ctx, double p, int64_t threads, at::IntArrayRef shared,
                  bool alpha) {
  ctx->saved_data["p"] = p;
  ctx->saved_data["threads"] = threads;
  if (!shared.empty() || alpha) {  // absent for plain dropout: fewer entries on every call
    ctx->saved_data["shared"] = shared.vec();
    ctx->saved_data["alpha"] = alpha;
  }
}

// The backward operator's gradient (through the dispatcher: with create_graph its own
// Autograd kernel makes the result differentiable in turn). Both backward operators are
// linear in grad, so each is its own gradient.
at::Tensor backward_of(AutogradContext* ctx, at::Tensor grad) {
  auto& saved = ctx->saved_data;
  const double p = saved["p"].toDouble();
  const int64_t threads = saved["threads"].toInt();
  const bool plain = !saved.count("shared");
  const std::vector<int64_t> shared =
      plain ? std::vector<int64_t>() : saved["shared"].toIntVector();
  const bool alpha = !plain && saved["alpha"].toBool();
  const bool recompute = saved.count("seed") > 0;
  // unpacked before any guard: unpacking may rerun a checkpointed forward, with autograd
  const at::Tensor words = recompute ? at::Tensor() : ctx->get_saved_variables()[0];
  if (owned_gradient(grad)) {
    at::AutoDispatchBelowADInplaceOrView below;
    if (recompute)
      recompute_inplace_op().call(grad, p, saved["seed"].toInt(), saved["stream"].toInt(),
                                  threads, shared, alpha);
    else
      backward_inplace_op().call(grad, words, p, threads, shared, alpha);
    return grad;
  }
  if (recompute)
    return recompute_op().call(grad, p, saved["seed"].toInt(), saved["stream"].toInt(), threads,
                               shared, alpha);
  return backward_op().call(grad, words, p, threads, shared, alpha);
}

// Gradient from stored mask words.
struct BackwardFromWords : public torch::autograd::Function<BackwardFromWords> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& words,
                            double p, int64_t threads, at::IntArrayRef shared, bool alpha) {
    ctx->save_for_backward({words});
    save_variant(ctx, p, threads, shared, alpha);
    at::AutoDispatchBelowADInplaceOrView below;
    return backward_op().call(grad, words, p, threads, shared, alpha);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {backward_of(ctx, grads[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Gradient with the mask regenerated from the key.
struct BackwardRecompute : public torch::autograd::Function<BackwardRecompute> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, double p, int64_t seed,
                            int64_t stream, int64_t threads, at::IntArrayRef shared, bool alpha) {
    save_variant(ctx, p, threads, shared, alpha);
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["stream"] = stream;
    at::AutoDispatchBelowADInplaceOrView below;
    return recompute_op().call(grad, p, seed, stream, threads, shared, alpha);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {backward_of(ctx, grads[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

// Dropout's autograd node: keeps the packed words (1 bit per mask element) or, with
// recompute, the key alone (two integers on the context, nothing of size n). In place, x
// is overwritten and marked dirty, as torch's in-place ops are.
struct Dropout : public torch::autograd::Function<Dropout> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double p, bool recompute,
                            bool inplace, int64_t seed, int64_t stream, int64_t threads,
                            at::IntArrayRef shared, bool alpha) {
    at::Tensor y, words;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(y, words) = keyed_op().call(x, p, seed, stream, !recompute, threads, shared, alpha);
      if (inplace)
        y = x.copy_(y);
    }
    if (inplace)
      ctx->mark_dirty({x});
    save_variant(ctx, p, threads, shared, alpha);
    if (recompute) {
      ctx->saved_data["seed"] = seed;
      ctx->saved_data["stream"] = stream;
    } else {
      ctx->save_for_backward({words});
    }
    return y;
  }

  // The gradients by reference (autograd's CppNode passes its own list): the first is moved
  // out, so that owned_gradient sees whether this node holds the only reference.
  static variable_list backward(AutogradContext* ctx, variable_list& grads) {
    variable_list result(9);
    result[0] = backward_of(ctx, std::move(grads[0]));
    return result;
  }
};

// CPU kernels: the computations.

std::tuple<at::Tensor, at::Tensor> dropout_keyed_cpu(const at::Tensor& x, double p, int64_t seed,
                                                     int64_t stream, bool keep_words,
                                                     int64_t threads, at::IntArrayRef shared,
                                                     bool alpha) {
  check_input(x, "dropout");
  auto [y, words] = dropout_forward(x, {p, shared, alpha}, {as_uint(seed), as_uint(stream)},
                                    keep_words, false, threads);
  if (!keep_words)
    words = at::empty({0}, x.options().dtype(at::kLong));
  return {y, words};
}

at::Tensor dropout_cpu(const at::Tensor& x, double p, bool recompute,
                       std::optional<at::Generator> generator, int64_t threads,
                       at::IntArrayRef shared, bool alpha) {
  check_input(x, "dropout");
  return dropout_forward(x, {p, shared, alpha}, draw_key(generator), false, false, threads).first;
}

at::Tensor& dropout_inplace_cpu(at::Tensor& x, double p, bool recompute,
                                std::optional<at::Generator> generator, int64_t threads,
                                at::IntArrayRef shared, bool alpha) {
  check_input(x, "dropout");
  dropout_forward(x, {p, shared, alpha}, draw_key(generator), false, true, threads);
  bump_version(x);
  return x;
}

at::Tensor dropout_backward_cpu(const at::Tensor& grad, const at::Tensor& words, double p,
                                int64_t threads, at::IntArrayRef shared, bool alpha) {
  return backward_from_words(grad, words, {p, shared, alpha}, threads);
}

at::Tensor dropout_backward_recompute_cpu(const at::Tensor& grad, double p, int64_t seed,
                                          int64_t stream, int64_t threads,
                                          at::IntArrayRef shared, bool alpha) {
  return backward_recompute(grad, {p, shared, alpha}, {as_uint(seed), as_uint(stream)}, threads);
}

void dropout_backward_inplace_cpu(const at::Tensor& grad, const at::Tensor& words, double p,
                                  int64_t threads, at::IntArrayRef shared, bool alpha) {
  backward_from_words(grad, words, {p, shared, alpha}, threads, true);
  bump_version(grad);
}

void dropout_backward_recompute_inplace_cpu(const at::Tensor& grad, double p, int64_t seed,
                                            int64_t stream, int64_t threads,
                                            at::IntArrayRef shared, bool alpha) {
  backward_recompute(grad, {p, shared, alpha}, {as_uint(seed), as_uint(stream)}, threads, true);
  bump_version(grad);
}

// The compiled path's operators (fastdrop.torch._ops.traced_dropout under torch.compile):
// the key drawn by an operator of its own, kept in program order, and dropout from that key
// tensor; their gradients are registered in Python (fastdrop.torch._ops).

// What fastdrop.torch._tensors.new_key draws: the two int64 of `random_(INT64_MIN, INT64_MAX)`.
at::Tensor draw_key_cpu(const at::Tensor& like) {
  const Key key = draw_key(std::nullopt);
  at::Tensor result = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  int64_t* values = result.data_ptr<int64_t>();
  values[0] = as_int(key.seed);
  values[1] = as_int(key.stream);
  return result;
}

Key key_of(const at::Tensor& key) {
  TORCH_CHECK(key.scalar_type() == at::kLong && key.numel() == 2 && key.device().is_cpu(),
              "fastdrop: a key is a CPU int64 tensor of two values (draw_key's)");
  const at::Tensor values = key.contiguous();
  const int64_t* data = values.const_data_ptr<int64_t>();
  return {as_uint(data[0]), as_uint(data[1])};
}

// (y, words): the words padded to at least two (fastdrop.torch._ops._MIN_WORDS), so that their
// count is never 1 whatever a dynamic dimension is.
std::tuple<at::Tensor, at::Tensor> dropout_of_key_cpu(const at::Tensor& x, double p,
                                                      const at::Tensor& key, int64_t threads,
                                                      at::IntArrayRef shared, bool alpha) {
  check_input(x, "dropout");
  auto [y, words] = dropout_forward(x, {p, shared, alpha}, key_of(key), true, false, threads);
  if (words.numel() < 2)
    words = at::cat({words, at::zeros({2 - words.numel()}, words.options())});
  return {y, words};
}

// `input` (the forward's) is not read: passing it makes a compiled graph keep it for
// backward rather than what the partitioner would otherwise keep (docs/development/compiled.md).
at::Tensor dropout_backward_of_words_cpu(const at::Tensor& grad, const at::Tensor& words,
                                         double p, int64_t threads, at::IntArrayRef shared,
                                         bool alpha, const std::optional<at::Tensor>& input) {
  return dropout_backward_cpu(grad, words, p, threads, shared, alpha);
}

// Autograd kernels.

at::Tensor dropout_autograd(const at::Tensor& x, double p, bool recompute,
                            std::optional<at::Generator> generator, int64_t threads,
                            at::IntArrayRef shared, bool alpha) {
  check_input(x, "dropout");
  const Key key = draw_key(generator);
  if (needs_grad(x))
    return Dropout::apply(x, p, recompute, false, as_int(key.seed), as_int(key.stream), threads,
                          shared, alpha);
  at::AutoDispatchBelowADInplaceOrView below;
  return std::get<0>(keyed_op().call(x, p, as_int(key.seed), as_int(key.stream), false, threads,
                                     shared, alpha));
}

at::Tensor& dropout_inplace_autograd(at::Tensor& x, double p, bool recompute,
                                     std::optional<at::Generator> generator, int64_t threads,
                                     at::IntArrayRef shared, bool alpha) {
  check_input(x, "dropout");
  const Key key = draw_key(generator);
  if (needs_grad(x)) {
    Dropout::apply(x, p, recompute, true, as_int(key.seed), as_int(key.stream), threads, shared,
                   alpha);
    return x;
  }
  dropout_forward(x, {p, shared, alpha}, key, false, true, threads);
  bump_version(x);
  return x;
}

at::Tensor dropout_backward_autograd(const at::Tensor& grad, const at::Tensor& words, double p,
                                     int64_t threads, at::IntArrayRef shared, bool alpha) {
  if (needs_grad(grad))
    return BackwardFromWords::apply(grad, words, p, threads, shared, alpha);
  at::AutoDispatchBelowADInplaceOrView below;
  return backward_op().call(grad, words, p, threads, shared, alpha);
}

at::Tensor dropout_backward_recompute_autograd(const at::Tensor& grad, double p, int64_t seed,
                                               int64_t stream, int64_t threads,
                                               at::IntArrayRef shared, bool alpha) {
  if (needs_grad(grad))
    return BackwardRecompute::apply(grad, p, seed, stream, threads, shared, alpha);
  at::AutoDispatchBelowADInplaceOrView below;
  return recompute_op().call(grad, p, seed, stream, threads, shared, alpha);
}

}  // namespace

TORCH_LIBRARY(fastdrop_cpp, m) {
  const std::vector<at::Tag> seeded{at::Tag::nondeterministic_seeded};
  m.def("dropout(Tensor input, float p, bool recompute=False, Generator? generator=None, "
        "int threads=0, int[] shared_dims=[], bool alpha=False) -> Tensor",
        seeded);
  m.def("dropout_(Tensor(a!) input, float p, bool recompute=False, Generator? generator=None, "
        "int threads=0, int[] shared_dims=[], bool alpha=False) -> Tensor(a!)",
        seeded);
  m.def("dropout_keyed(Tensor input, float p, int seed, int stream, bool keep_words, "
        "int threads=0, int[] shared_dims=[], bool alpha=False) -> (Tensor, Tensor)");
  m.def("dropout_backward(Tensor grad, Tensor words, float p, int threads=0, "
        "int[] shared_dims=[], bool alpha=False) -> Tensor");
  m.def("dropout_backward_recompute(Tensor grad, float p, int seed, int stream, int threads=0, "
        "int[] shared_dims=[], bool alpha=False) -> Tensor");
  // compiled graphs' (no Autograd kernel here: fastdrop.torch._ops registers their gradients)
  m.def("draw_key(Tensor like) -> Tensor", seeded);
  m.def("dropout_of_key(Tensor input, float p, Tensor key, int threads, int[] shared_dims, "
        "bool alpha) -> (Tensor, Tensor)");
  m.def("dropout_backward_of_words(Tensor grad, Tensor words, float p, int threads, "
        "int[] shared_dims, bool alpha, Tensor? input) -> Tensor");
  // the two backwards into the gradient itself (a node's backward, where it owns it)
  m.def("dropout_backward_(Tensor(a!) grad, Tensor words, float p, int threads=0, "
        "int[] shared_dims=[], bool alpha=False) -> ()");
  m.def("dropout_backward_recompute_(Tensor(a!) grad, float p, int seed, int stream, "
        "int threads=0, int[] shared_dims=[], bool alpha=False) -> ()");
}

TORCH_LIBRARY_IMPL(fastdrop_cpp, CPU, m) {
  m.impl("dropout", dropout_cpu);
  m.impl("dropout_", dropout_inplace_cpu);
  m.impl("dropout_keyed", dropout_keyed_cpu);
  m.impl("dropout_backward", dropout_backward_cpu);
  m.impl("dropout_backward_recompute", dropout_backward_recompute_cpu);
  m.impl("draw_key", draw_key_cpu);
  m.impl("dropout_of_key", dropout_of_key_cpu);
  m.impl("dropout_backward_of_words", dropout_backward_of_words_cpu);
  m.impl("dropout_backward_", dropout_backward_inplace_cpu);
  m.impl("dropout_backward_recompute_", dropout_backward_recompute_inplace_cpu);
}

TORCH_LIBRARY_IMPL(fastdrop_cpp, Autograd, m) {
  m.impl("dropout", dropout_autograd);
  m.impl("dropout_", dropout_inplace_autograd);
  m.impl("dropout_backward", dropout_backward_autograd);
  m.impl("dropout_backward_recompute", dropout_backward_recompute_autograd);
}

// The eager entry fastdrop.torch calls: the registered operator through the dispatcher from
// C++ (a pybind11 call costs less than torch.ops' argument parsing in Python).
namespace {

at::Tensor call_dropout(const at::Tensor& x, double p, bool recompute, bool inplace,
                        std::optional<at::Generator> generator, int64_t threads,
                        const std::vector<int64_t>& shared, bool alpha) {
  using Signature = at::Tensor(const at::Tensor&, double, bool, std::optional<at::Generator>,
                               int64_t, at::IntArrayRef, bool);
  using InplaceSignature = at::Tensor&(at::Tensor&, double, bool, std::optional<at::Generator>,
                                       int64_t, at::IntArrayRef, bool);
  if (x.numel() == 0)  // nothing to drop, no key drawn: the input itself, as torch returns it
    return x;
  if (inplace) {
    static const auto op = find_op<InplaceSignature>("fastdrop_cpp::dropout_");
    at::Tensor target = x;
    return op.call(target, p, recompute, std::move(generator), threads, shared, alpha);
  }
  static const auto op = find_op<Signature>("fastdrop_cpp::dropout");
  return op.call(x, p, recompute, std::move(generator), threads, shared, alpha);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("dropout", &call_dropout, "fastdrop.torch's dropout of a CPU tensor", py::arg("input"),
        py::arg("p"), py::arg("recompute"), py::arg("inplace"), py::arg("generator"),
        py::arg("threads"), py::arg("shared_dims") = std::vector<int64_t>(),
        py::arg("alpha") = false);
  m.def("simd_level", &fd_simd_enabled, "the SIMD level the kernels use");
}
