// fastdrop.torch's per-call path in C++: dropout of CPU tensors, its key drawn from torch's
// generator, its autograd node, and the kernels of fastdrop/include, with no Python or NumPy
// in the call.
//
// Built on first use against the installed torch (fastdrop/torch/_build.py). The same bits,
// errors and semantics as the Python path (fastdrop/torch/_tensors.py): the key is the two
// int64 draws `key.random_(INT64_MIN, INT64_MAX, generator)` makes, read as uint64; the mask
// is docs/mask-stream.md's for that (seed, stream); s = 1 / (1 - p) in float64, rounded once
// to the dtype. Operators (namespace fastdrop_cpp), each with a CPU and an Autograd kernel:
//
//   dropout(Tensor input, float p, bool recompute, Generator? generator, int threads) -> Tensor
//   dropout_(Tensor(a!) input, ...) -> Tensor(a!)               the same, in place
//   dropout_backward(Tensor grad, Tensor words, float p, int threads) -> Tensor
//   dropout_backward_recompute(Tensor grad, float p, int seed, int stream, int threads) -> Tensor
//
// threads: fastdrop's own thread count where the user chose one, else 0 (torch's).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <sys/mman.h>
#include <torch/extension.h>
#include <torch/library.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "fastdrop/dropout.h"

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

// s = 1 / (1 - p) in float64 (0 for p = 1): docs/mask-stream.md, section 6.
double dropout_scale(double p) { return p >= 1.0 ? 0.0 : 1.0 / (1.0 - p); }

// A float64 >= 0 rounded once to `bits` significant bits, to nearest even (a carry into the
// exponent is right): float16 keeps 11, bfloat16 8. Every s is 0 or >= 1, never subnormal.
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

// The kernels of one element type T, and s as they take it (fastdrop.kernels.common's
// kernel_scale: float16 and bfloat16 multiply in float32 by s rounded to their type).
template <typename T, typename S>
struct Kernels {
  using Element = T;
  void (*dropout)(const T*, T*, uint64_t*, S, const fd_mask_params*, int64_t, int64_t);
  void (*apply)(const T*, T*, const uint64_t*, S, int64_t, int64_t, int64_t);
  S scale;
};

template <typename Body>
void with_kernels(at::ScalarType type, double s, Body&& body) {
  switch (type) {
    case at::kDouble:
      body(Kernels<double, double>{fd_dropout_range_f64, fd_apply_mask_range_f64, s});
      return;
    case at::kFloat:
      body(Kernels<float, float>{fd_dropout_range_f32, fd_apply_mask_range_f32,
                                 static_cast<float>(s)});
      return;
    case at::kHalf:  // 2^16 and up is inf in float16, as NumPy rounds s
      body(Kernels<uint16_t, float>{
          fd_dropout_range_f16, fd_apply_mask_range_f16,
          fd_half_to_float(fd_float_to_half(static_cast<float>(round_significand(s, 11))))});
      return;
    case at::kBFloat16:
      body(Kernels<fd_bfloat16, float>{fd_dropout_range_bf16, fd_apply_mask_range_bf16,
                                       static_cast<float>(round_significand(s, 8))});
      return;
    default:
      TORCH_CHECK_TYPE(false, "fastdrop: no kernel for ", type);
  }
}

// range(first, stop) over the n elements' mask words: on one thread below two threads'
// worth of elements, else in near-equal ranges of whole words, one per thread (as the
// Cython kernels split them; the bits never depend on the split).
template <typename Range>
void over_words(int64_t n, int64_t threads, Range&& range) {
  const int64_t total = fd_words_for(n);
  if (n < 2 * kMinElementsPerThread) {
    range(0, total);
    return;
  }
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(threads > 0 ? threads : at::get_num_threads(),
                           n / kMinElementsPerThread));
  const int64_t step = (total + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk)
      range(std::min(chunk * step, total), std::min((chunk + 1) * step, total));
  });
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

// A new result of x's shape, dtype and memory format (torch.empty_like's).
at::Tensor new_like(const at::Tensor& x) {
  at::Tensor result = at::empty_like(x);
  advise_huge_pages(result);
  return result;
}

// target = dropout of source (C-contiguous, same dtype and size; may be source itself) with
// the key's mask; the mask's words into words unless it is null.
void stream_into(const at::Tensor& source, const at::Tensor& target, uint64_t* words, double p,
                 Key key, int64_t threads) {
  const int64_t n = source.numel();
  if (n == 0)
    return;
  const fd_mask_params params = fd_mask_params_make(key.seed, key.stream, p, 0, n);
  with_kernels(source.scalar_type(), dropout_scale(p), [&](auto kernels) {
    using T = typename decltype(kernels)::Element;
    const T* from = static_cast<const T*>(source.const_data_ptr());
    T* to = static_cast<T*>(target.data_ptr());
    over_words(n, threads, [&](int64_t first, int64_t stop) {
      kernels.dropout(from, to, words, kernels.scale, &params, first, stop);
    });
  });
}

// out = source scaled where the stored words keep it (source C-contiguous).
void apply_words(const at::Tensor& source, const at::Tensor& target, const uint64_t* words,
                 double p, int64_t threads) {
  const int64_t n = source.numel();
  if (n == 0)
    return;
  with_kernels(source.scalar_type(), dropout_scale(p), [&](auto kernels) {
    using T = typename decltype(kernels)::Element;
    const T* from = static_cast<const T*>(source.const_data_ptr());
    T* to = static_cast<T*>(target.data_ptr());
    over_words(n, threads, [&](int64_t first, int64_t stop) {
      kernels.apply(from, to, words, kernels.scale, n, first, stop);
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

// Dropout of x with the key's mask: (y, words as int64), y new or x itself.
std::pair<at::Tensor, at::Tensor> dropout_forward(const at::Tensor& x, double p, Key key,
                                                  bool keep_words, bool inplace, int64_t threads) {
  at::Tensor words;
  uint64_t* word_data = nullptr;
  if (keep_words) {
    words = at::empty({fd_words_for(x.numel())}, x.options().dtype(at::kLong));
    word_data = reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>());
  }
  at::Tensor y = into_result(x, inplace, [&](const at::Tensor& source, const at::Tensor& target) {
    stream_into(source, target, word_data, p, key, threads);
  });
  return {y, words};
}

at::Tensor backward_from_words(const at::Tensor& grad, const at::Tensor& words, double p,
                               int64_t threads) {
  TORCH_CHECK(words.scalar_type() == at::kLong && words.dim() == 1 && words.is_contiguous() &&
                  words.numel() >= fd_words_for(grad.numel()),
              "fastdrop: dropout_backward needs the int64 mask words of the forward call");
  const auto* word_data = reinterpret_cast<const uint64_t*>(words.const_data_ptr<int64_t>());
  return into_result(grad, false, [&](const at::Tensor& source, const at::Tensor& target) {
    apply_words(source, target, word_data, p, threads);
  });
}

at::Tensor backward_recompute(const at::Tensor& grad, double p, Key key, int64_t threads) {
  return into_result(grad, false, [&](const at::Tensor& source, const at::Tensor& target) {
    stream_into(source, target, nullptr, p, key, threads);
  });
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
                                                         int64_t, bool, int64_t);
using BackwardFromWordsOp = at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t);
using BackwardRecomputeOp = at::Tensor(const at::Tensor&, double, int64_t, int64_t, int64_t);

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

int64_t as_int(uint64_t value) { return static_cast<int64_t>(value); }
uint64_t as_uint(int64_t value) { return static_cast<uint64_t>(value); }

bool needs_grad(const at::Tensor& tensor) {
  return tensor.requires_grad() && at::GradMode::is_enabled();
}

// Gradient from stored mask words: linear in grad, so its own gradient (double backward).
struct BackwardFromWords : public torch::autograd::Function<BackwardFromWords> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& words,
                            double p, int64_t threads) {
    ctx->save_for_backward({words});
    ctx->saved_data["p"] = p;
    ctx->saved_data["threads"] = threads;
    at::AutoDispatchBelowADInplaceOrView below;
    return backward_op().call(grad, words, p, threads);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor words = ctx->get_saved_variables()[0];
    return {backward_op().call(grads[0], words, ctx->saved_data["p"].toDouble(),
                               ctx->saved_data["threads"].toInt()),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Gradient with the mask regenerated from the key: its own gradient too.
struct BackwardRecompute : public torch::autograd::Function<BackwardRecompute> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, double p, int64_t seed,
                            int64_t stream, int64_t threads) {
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["stream"] = stream;
    ctx->saved_data["threads"] = threads;
    at::AutoDispatchBelowADInplaceOrView below;
    return recompute_op().call(grad, p, seed, stream, threads);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& saved = ctx->saved_data;
    return {recompute_op().call(grads[0], saved["p"].toDouble(), saved["seed"].toInt(),
                                saved["stream"].toInt(), saved["threads"].toInt()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Dropout's autograd node: keeps the packed words (1 bit per element) or, with recompute,
// the key alone (two integers on the context, nothing of size n). In place, x is
// overwritten and marked dirty, as torch's in-place ops are.
struct Dropout : public torch::autograd::Function<Dropout> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double p, bool recompute,
                            bool inplace, int64_t seed, int64_t stream, int64_t threads) {
    at::Tensor y, words;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(y, words) = keyed_op().call(x, p, seed, stream, !recompute, threads);
      if (inplace)
        y = x.copy_(y);
    }
    if (inplace)
      ctx->mark_dirty({x});
    ctx->saved_data["p"] = p;
    ctx->saved_data["threads"] = threads;
    if (recompute) {
      ctx->saved_data["seed"] = seed;
      ctx->saved_data["stream"] = stream;
    } else {
      ctx->save_for_backward({words});
    }
    return y;
  }

  // The backward operators, through the dispatcher: with create_graph their own Autograd
  // kernels make the result differentiable in turn.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& saved = ctx->saved_data;
    const double p = saved["p"].toDouble();
    const int64_t threads = saved["threads"].toInt();
    const at::Tensor result =
        saved.count("seed")
            ? recompute_op().call(grads[0], p, saved["seed"].toInt(), saved["stream"].toInt(),
                                  threads)
            : backward_op().call(grads[0], ctx->get_saved_variables()[0], p, threads);
    return {result, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// CPU kernels: the computations.

std::tuple<at::Tensor, at::Tensor> dropout_keyed_cpu(const at::Tensor& x, double p, int64_t seed,
                                                     int64_t stream, bool keep_words,
                                                     int64_t threads) {
  check_input(x, "dropout");
  auto [y, words] = dropout_forward(x, p, {as_uint(seed), as_uint(stream)}, keep_words, false,
                                    threads);
  if (!keep_words)
    words = at::empty({0}, x.options().dtype(at::kLong));
  return {y, words};
}

at::Tensor dropout_cpu(const at::Tensor& x, double p, bool recompute,
                       std::optional<at::Generator> generator, int64_t threads) {
  check_input(x, "dropout");
  return dropout_forward(x, p, draw_key(generator), false, false, threads).first;
}

at::Tensor& dropout_inplace_cpu(at::Tensor& x, double p, bool recompute,
                                std::optional<at::Generator> generator, int64_t threads) {
  check_input(x, "dropout");
  dropout_forward(x, p, draw_key(generator), false, true, threads);
  bump_version(x);
  return x;
}

at::Tensor dropout_backward_cpu(const at::Tensor& grad, const at::Tensor& words, double p,
                                int64_t threads) {
  return backward_from_words(grad, words, p, threads);
}

at::Tensor dropout_backward_recompute_cpu(const at::Tensor& grad, double p, int64_t seed,
                                          int64_t stream, int64_t threads) {
  return backward_recompute(grad, p, {as_uint(seed), as_uint(stream)}, threads);
}

// Autograd kernels.

at::Tensor dropout_autograd(const at::Tensor& x, double p, bool recompute,
                            std::optional<at::Generator> generator, int64_t threads) {
  check_input(x, "dropout");
  const Key key = draw_key(generator);
  if (needs_grad(x))
    return Dropout::apply(x, p, recompute, false, as_int(key.seed), as_int(key.stream), threads);
  at::AutoDispatchBelowADInplaceOrView below;
  return std::get<0>(keyed_op().call(x, p, as_int(key.seed), as_int(key.stream), false, threads));
}

at::Tensor& dropout_inplace_autograd(at::Tensor& x, double p, bool recompute,
                                     std::optional<at::Generator> generator, int64_t threads) {
  check_input(x, "dropout");
  const Key key = draw_key(generator);
  if (needs_grad(x)) {
    Dropout::apply(x, p, recompute, true, as_int(key.seed), as_int(key.stream), threads);
    return x;
  }
  dropout_forward(x, p, key, false, true, threads);
  bump_version(x);
  return x;
}

at::Tensor dropout_backward_autograd(const at::Tensor& grad, const at::Tensor& words, double p,
                                     int64_t threads) {
  if (needs_grad(grad))
    return BackwardFromWords::apply(grad, words, p, threads);
  at::AutoDispatchBelowADInplaceOrView below;
  return backward_op().call(grad, words, p, threads);
}

at::Tensor dropout_backward_recompute_autograd(const at::Tensor& grad, double p, int64_t seed,
                                               int64_t stream, int64_t threads) {
  if (needs_grad(grad))
    return BackwardRecompute::apply(grad, p, seed, stream, threads);
  at::AutoDispatchBelowADInplaceOrView below;
  return recompute_op().call(grad, p, seed, stream, threads);
}

}  // namespace

TORCH_LIBRARY(fastdrop_cpp, m) {
  const std::vector<at::Tag> seeded{at::Tag::nondeterministic_seeded};
  m.def("dropout(Tensor input, float p, bool recompute=False, Generator? generator=None, "
        "int threads=0) -> Tensor",
        seeded);
  m.def("dropout_(Tensor(a!) input, float p, bool recompute=False, Generator? generator=None, "
        "int threads=0) -> Tensor(a!)",
        seeded);
  m.def("dropout_keyed(Tensor input, float p, int seed, int stream, bool keep_words, "
        "int threads=0) -> (Tensor, Tensor)");
  m.def("dropout_backward(Tensor grad, Tensor words, float p, int threads=0) -> Tensor");
  m.def("dropout_backward_recompute(Tensor grad, float p, int seed, int stream, int threads=0) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(fastdrop_cpp, CPU, m) {
  m.impl("dropout", dropout_cpu);
  m.impl("dropout_", dropout_inplace_cpu);
  m.impl("dropout_keyed", dropout_keyed_cpu);
  m.impl("dropout_backward", dropout_backward_cpu);
  m.impl("dropout_backward_recompute", dropout_backward_recompute_cpu);
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
                        std::optional<at::Generator> generator, int64_t threads) {
  using Signature = at::Tensor(const at::Tensor&, double, bool, std::optional<at::Generator>,
                               int64_t);
  using InplaceSignature = at::Tensor&(at::Tensor&, double, bool, std::optional<at::Generator>,
                                       int64_t);
  if (x.numel() == 0)  // nothing to drop, no key drawn: the input itself, as torch returns it
    return x;
  if (inplace) {
    static const auto op = find_op<InplaceSignature>("fastdrop_cpp::dropout_");
    at::Tensor target = x;
    return op.call(target, p, recompute, std::move(generator), threads);
  }
  static const auto op = find_op<Signature>("fastdrop_cpp::dropout");
  return op.call(x, p, recompute, std::move(generator), threads);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout", &call_dropout, "fastdrop.torch's dropout of a CPU tensor",
        pybind11::arg("input"), pybind11::arg("p"), pybind11::arg("recompute"),
        pybind11::arg("inplace"), pybind11::arg("generator"), pybind11::arg("threads"));
  m.def("simd_level", &fd_simd_enabled, "the SIMD level the kernels use");
}
