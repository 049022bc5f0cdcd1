// 2-D convolutions for XLA:CPU through oneDNN, as XLA FFI handlers (molml_jax/ops/conv.py).
//
// Layouts are JAX's: x (N, H, W, C_in) NHWC, kernel (KH, KW, C_in, C_out) HWIO, y (N, OH, OW,
// C_out), stride 1, explicit padding (top, bottom, left, right), OH = H + top + bottom - KH + 1.
// Activations stay NHWC (no copies); only the small kernel is reordered to the blocked layout
// oneDNN's JIT kernels choose ("any"), which is what makes the backward passes fast: with a
// plain HWIO kernel oneDNN falls back to GEMM-based backward kernels (2-5x slower).
//
// Three handlers (the backward ones separate, so XLA drops the input gradient of the first
// layer): Conv2dForward(x, kernel) -> y; Conv2dBackwardData(dy, kernel) -> dx;
// Conv2dBackwardWeights(x, dy) -> dkernel. Primitives are built once per shape and padding
// and cached; every call gets its own scratchpad, so concurrent calls are safe.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum class Kind { kForward, kBackwardData, kBackwardWeights };

struct Geometry {
  int64_t n, h, w, ic, oh, ow, oc, kh, kw, top, bottom, left, right;

  std::string Key(Kind kind) const {
    std::string key = std::to_string(static_cast<int>(kind));
    for (int64_t v : {n, h, w, ic, oh, ow, oc, kh, kw, top, bottom, left, right}) {
      key += "," + std::to_string(v);
    }
    return key;
  }
};

// One cached primitive with the reorder between the user's HWIO kernel and the layout the
// primitive wants (to it for forward / backward-data, from it for backward-weights).
struct Entry {
  dnnl::primitive conv;
  dnnl::memory::desc kernel_desc;   // the primitive's (blocked) kernel layout
  dnnl::memory::desc hwio_desc;     // the user's kernel layout
  bool reorder_needed = false;
  dnnl::primitive reorder;          // valid when reorder_needed
  size_t scratchpad_bytes = 0;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct AlignedBuffer {
  explicit AlignedBuffer(size_t bytes)
      : data(bytes ? std::aligned_alloc(64, (bytes + 63) / 64 * 64) : nullptr) {}
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  void* data;
};

template <typename Primitive>
void Assign(Entry& entry, const typename Primitive::primitive_desc& pd, const dnnl::memory::desc& kernel_desc) {
  entry.conv = Primitive(pd);
  entry.kernel_desc = kernel_desc;
  entry.scratchpad_bytes = pd.scratchpad_desc().get_size();
}

std::shared_ptr<Entry> Build(Kind kind, const Geometry& g) {
  auto& eng = Engine();
  dnnl::memory::desc src({g.n, g.ic, g.h, g.w}, dt::f32, tag::nhwc);
  dnnl::memory::desc dst({g.n, g.oc, g.oh, g.ow}, dt::f32, tag::nhwc);
  dnnl::memory::desc any_kernel({g.oc, g.ic, g.kh, g.kw}, dt::f32, tag::any);
  dnnl::memory::dims strides{1, 1}, pad_l{g.top, g.left}, pad_r{g.bottom, g.right};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto forward = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      any_kernel, dst, strides, pad_l, pad_r, attr);
  auto entry = std::make_shared<Entry>();
  entry->hwio_desc = dnnl::memory::desc({g.oc, g.ic, g.kh, g.kw}, dt::f32, tag::hwio);
  dnnl::primitive_attr reorder_attr;
  reorder_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (kind == Kind::kForward) {
    Assign<dnnl::convolution_forward>(*entry, forward, forward.weights_desc());
  } else if (kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(eng, dnnl::algorithm::convolution_direct, src, any_kernel,
                                                       dst, strides, pad_l, pad_r, forward, attr);
    Assign<dnnl::convolution_backward_data>(*entry, pd, pd.weights_desc());
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(eng, dnnl::algorithm::convolution_direct, src, any_kernel,
                                                          dst, strides, pad_l, pad_r, forward, attr);
    Assign<dnnl::convolution_backward_weights>(*entry, pd, pd.diff_weights_desc());
  }
  entry->reorder_needed = entry->kernel_desc != entry->hwio_desc;
  if (entry->reorder_needed) {
    auto pd = kind == Kind::kBackwardWeights
                  ? dnnl::reorder::primitive_desc(eng, entry->kernel_desc, eng, entry->hwio_desc, reorder_attr)
                  : dnnl::reorder::primitive_desc(eng, entry->hwio_desc, eng, entry->kernel_desc, reorder_attr);
    entry->reorder = dnnl::reorder(pd);
    entry->scratchpad_bytes = std::max(entry->scratchpad_bytes, pd.scratchpad_desc().get_size());
  }
  return entry;
}

std::shared_ptr<Entry> Cached(Kind kind, const Geometry& g) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Entry>> cache;
  const std::string key = g.Key(kind);
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto entry = Build(kind, g);  // outside the lock: building JIT-compiles kernels
  std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, entry).first->second;
}

ffi::Error Run(Kind kind, const Geometry& g, void* x, void* kernel, void* y) {
  if (g.kh > g.h + g.top + g.bottom || g.kw > g.w + g.left + g.right ||
      g.oh != g.h + g.top + g.bottom - g.kh + 1 || g.ow != g.w + g.left + g.right - g.kw + 1) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "inconsistent convolution shapes");
  }
  try {
    auto entry = Cached(kind, g);
    auto& eng = Engine();
    dnnl::stream stream(eng);
    AlignedBuffer scratch(entry->scratchpad_bytes);
    dnnl::memory scratchpad(dnnl::memory::desc({static_cast<int64_t>(entry->scratchpad_bytes)},
                                               dt::u8, tag::x), eng, scratch.data);
    dnnl::memory src({{g.n, g.ic, g.h, g.w}, dt::f32, tag::nhwc}, eng, x);
    dnnl::memory dst({{g.n, g.oc, g.oh, g.ow}, dt::f32, tag::nhwc}, eng, y);
    dnnl::memory user_kernel(entry->hwio_desc, eng, kernel);
    AlignedBuffer blocked(entry->reorder_needed ? entry->kernel_desc.get_size() : 0);
    dnnl::memory conv_kernel = entry->reorder_needed
                                   ? dnnl::memory(entry->kernel_desc, eng, blocked.data)
                                   : user_kernel;
    if (kind == Kind::kForward) {
      if (entry->reorder_needed) {
        entry->reorder.execute(stream, {{DNNL_ARG_FROM, user_kernel}, {DNNL_ARG_TO, conv_kernel},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad}});
      }
      entry->conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, conv_kernel},
                                   {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (kind == Kind::kBackwardData) {
      if (entry->reorder_needed) {
        entry->reorder.execute(stream, {{DNNL_ARG_FROM, user_kernel}, {DNNL_ARG_TO, conv_kernel},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad}});
      }
      entry->conv.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, conv_kernel},
                                   {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      entry->conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                                   {DNNL_ARG_DIFF_WEIGHTS, conv_kernel},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (entry->reorder_needed) {
        entry->reorder.execute(stream, {{DNNL_ARG_FROM, conv_kernel}, {DNNL_ARG_TO, user_kernel},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad}});
      }
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

// Shapes: x (N, H, W, C_in), kernel (KH, KW, C_in, C_out), y (N, OH, OW, C_out), whichever
// of them is the operand or the result of the pass.
ffi::Error Checked(Kind kind, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::Buffer<ffi::F32> y, int64_t top, int64_t bottom, int64_t left, int64_t right) {
  auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "x, kernel and y must have rank 4");
  }
  if (kd[2] != xd[3] || kd[3] != yd[3] || xd[0] != yd[0]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "channel or batch sizes do not agree");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], kd[0], kd[1], top, bottom, left, right};
  return Run(kind, g, x.untyped_data(), kernel.untyped_data(), y.untyped_data());
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> y,
                   int64_t top, int64_t bottom, int64_t left, int64_t right) {
  return Checked(Kind::kForward, x, kernel, *y, top, bottom, left, right);
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> dx,
                        int64_t top, int64_t bottom, int64_t left, int64_t right) {
  return Checked(Kind::kBackwardData, *dx, kernel, dy, top, bottom, left, right);
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dkernel,
                           int64_t top, int64_t bottom, int64_t left, int64_t right) {
  return Checked(Kind::kBackwardWeights, x, *dkernel, dy, top, bottom, left, right);
}

}  // namespace

#define MOLML_CONV_HANDLER(name, impl)                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, impl,                                        \
                                ffi::Ffi::Bind()                                   \
                                    .Arg<ffi::Buffer<ffi::F32>>()                  \
                                    .Arg<ffi::Buffer<ffi::F32>>()                  \
                                    .Ret<ffi::Buffer<ffi::F32>>()                  \
                                    .Attr<int64_t>("pad_top")                      \
                                    .Attr<int64_t>("pad_bottom")                   \
                                    .Attr<int64_t>("pad_left")                     \
                                    .Attr<int64_t>("pad_right"));

MOLML_CONV_HANDLER(Conv2dForward, Forward)
MOLML_CONV_HANDLER(Conv2dBackwardData, BackwardData)
MOLML_CONV_HANDLER(Conv2dBackwardWeights, BackwardWeights)
