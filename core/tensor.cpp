// Tensor, Storage and byte copies. CUDA memory goes through core/cuda_context (stream-ordered pool).
#include "core/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "core/autograd.h"
#include "core/cuda_context.h"
#include "core/dispatch.h"
#include "core/memory_stats.h"
#include "kernels/elementwise.h"
#ifdef POLDER_HAVE_CUDA
#include "kernels/cuda/convert.h"
#endif

namespace polder {

size_t dtype_size(DType dtype) {
  return dtype_bytes(dtype);
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "f32";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::f64:
      return "f64";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::u8:
      return "u8";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64, DType::u8}) {
    if (name == dtype_name(d)) return d;
  }
  if (name == "float32" || name == "fp32") return DType::f32;
  if (name == "bfloat16") return DType::bf16;
  if (name == "float16" || name == "fp16") return DType::f16;
  POLDER_FAIL("unknown dtype '{}' (expected one of f32, bf16, f16, f64, i32, i64, u8)", name);
}

std::ostream& operator<<(std::ostream& os, Device d) {
  return os << (d.is_cpu() ? "cpu" : "cuda:" + std::to_string(d.index));
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_str(const Shape& shape) {
  return format("{}", shape);
}

namespace {

// Host block cache: a training step allocates the same buffers (logits, activations, their gradients) every
// micro-batch. Fresh allocations of more than glibc's mmap threshold come from mmap and pay a page fault per
// 4 KiB on first touch (~10% of a CPU step for the large ones), so blocks of 64 KiB and more are kept on free
// lists by rounded size (4 KiB granules below 1 MiB, 64 KiB above) and reused. Bounded by kHostCacheLimit.
// (With 1 MiB as the floor, the tiny model's 256-512 KB activations still cost ~10k page faults and ~20 ms
// per step.)
class HostCache {
 public:
  static constexpr size_t kMin = size_t{64} << 10;
  static constexpr size_t kLarge = size_t{1} << 20;
  static constexpr size_t kHostCacheLimit = size_t{4} << 30;

  static size_t rounded(size_t n) {
    const size_t granule = n >= kLarge ? size_t{64} << 10 : n >= kMin ? size_t{4} << 10 : 64;
    return (n + granule - 1) / granule * granule;
  }

  void* get(size_t n) {
    const size_t r = rounded(n);
    if (r >= kMin) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(r);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= r;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, r);
    POLDER_CHECK(p != nullptr, "out of host memory allocating {} bytes", n);
    return p;
  }

  void put(void* p, size_t n) {
    const size_t r = rounded(n);
    if (r >= kMin) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + r <= kHostCacheLimit) {
        free_[r].push_back(p);
        cached_ += r;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

HostCache& host_cache() {
  static HostCache* cache = new HostCache();  // never destroyed: storages may outlive static destruction
  return *cache;
}

}  // namespace

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  materialize();
}

Storage::~Storage() {
  release();
}

void Storage::release() {
  if (!data_) return;
  memory::record_free(device_, nbytes_);
  if (device_.is_cpu()) {
    host_cache().put(data_, nbytes_);
  } else {
    cuda::device_free(data_, device_.index);
  }
  data_ = nullptr;
}

void Storage::materialize() {
  if (data_ || nbytes_ == 0) return;
  data_ = device_.is_cpu() ? host_cache().get(nbytes_) : cuda::device_alloc(nbytes_, device_.index);
  static std::atomic<uint64_t> generations{0};
  generation_ = ++generations;
  memory::record_alloc(device_, nbytes_);
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, nbytes);
  } else {
    cuda::copy(dst, dst_device.is_cuda(), src, src_device.is_cuda(), nbytes);
  }
}

static const std::shared_ptr<TensorImpl>& checked(const std::shared_ptr<TensorImpl>& impl) {
  POLDER_CHECK(impl != nullptr, "operation on an undefined tensor");
  return impl;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t s : shape) POLDER_CHECK(s >= 0, "empty: negative size in shape {}", shape);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage =
      std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype, Device device) {
  return full({}, value, dtype, device);
}

const Shape& Tensor::shape() const {
  return checked(impl_)->shape;
}
int64_t Tensor::numel() const {
  return shape_numel(shape());
}
DType Tensor::dtype() const {
  return checked(impl_)->dtype;
}
Device Tensor::device() const {
  return checked(impl_)->storage->device();
}
size_t Tensor::offset() const {
  return checked(impl_)->offset;
}
const std::shared_ptr<Storage>& Tensor::storage() const {
  return checked(impl_)->storage;
}
void* Tensor::raw_data() const {
  return static_cast<char*>(storage()->data()) + impl_->offset;
}
bool Tensor::same_storage(const Tensor& other) const {
  return storage() == other.storage();
}

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  int64_t dd = d < 0 ? d + n : d;
  POLDER_CHECK(dd >= 0 && dd < n, "size: dim {} out of range for a tensor of shape {}", d, shape());
  return shape()[static_cast<size_t>(dd)];
}

double Tensor::item() const {
  POLDER_CHECK(numel() == 1, "item: tensor of shape {} has {} elements, expected 1", shape(), numel());
  Tensor h = to(Device::cpu()).to(DType::f64);
  return *h.data<double>();
}

static Tensor make_view(const Tensor& base, const Shape& shape, size_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = shape;
  impl->dtype = base.dtype();
  impl->offset = offset;
  return Tensor(std::move(impl));
}

Tensor Tensor::view(const Shape& new_shape) const {
  Shape s = new_shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      POLDER_CHECK(infer < 0, "view: more than one -1 in shape {}", new_shape);
      infer = static_cast<int>(i);
    } else {
      POLDER_CHECK(s[i] >= 0, "view: invalid size {} in shape {}", s[i], new_shape);
      known *= s[i];
    }
  }
  if (infer >= 0) {
    POLDER_CHECK(known > 0 && numel() % known == 0,
                 "view: shape {} is invalid for a tensor of shape {} ({} elements)", new_shape, shape(),
                 numel());
    s[static_cast<size_t>(infer)] = numel() / known;
  }
  POLDER_CHECK(shape_numel(s) == numel(), "view: shape {} is invalid for a tensor of shape {} ({} elements)",
               new_shape, shape(), numel());
  return make_view(*this, s, offset());
}

bool Tensor::narrow_is_view(int64_t d, int64_t, int64_t) const {
  int64_t n = dim();
  int64_t dd = d < 0 ? d + n : d;
  for (int64_t i = 0; i < dd; ++i)
    if (shape()[static_cast<size_t>(i)] != 1) return false;
  return true;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  int64_t n = dim();
  int64_t dd = d < 0 ? d + n : d;
  POLDER_CHECK(dd >= 0 && dd < n, "narrow: dim {} out of range for a tensor of shape {}", d, shape());
  int64_t extent = shape()[static_cast<size_t>(dd)];
  POLDER_CHECK(start >= 0 && length >= 0 && start + length <= extent,
               "narrow: [{}, {}) is out of range for dim {} of size {} (shape {})", start, start + length, d,
               extent, shape());
  POLDER_CHECK(
      narrow_is_view(dd, start, length),
      "narrow: dim {} of shape {} is not the outermost non-unit dim, so the slice is not contiguous; "
      "use ops::narrow, which copies",
      d, shape());
  int64_t inner = 1;
  for (int64_t i = dd + 1; i < n; ++i) inner *= shape()[static_cast<size_t>(i)];
  Shape s = shape();
  s[static_cast<size_t>(dd)] = length;
  return make_view(*this, s, offset() + static_cast<size_t>(start * inner) * dtype_size(dtype()));
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape(), dtype(), device());
  copy_bytes(t.raw_data(), device(), raw_data(), device(), nbytes());
  return t;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor t = empty(shape(), target, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor t = empty(shape(), dtype(), target);
  copy_bytes(t.raw_data(), target, raw_data(), device(), nbytes());
  return t;
}

void Tensor::copy_(const Tensor& src) {
  POLDER_CHECK(src.shape() == shape() || src.numel() == numel(),
               "copy_: source shape {} does not match destination shape {}", src.shape(), shape());
  if (src.dtype() == dtype()) {
    copy_bytes(raw_data(), device(), src.raw_data(), src.device(), nbytes());
    return;
  }
  Tensor s = src.to(device());
  POLDER_KERNEL(device(), convert, raw_data(), dtype(), s.raw_data(), s.dtype(), numel());
}

void Tensor::fill_(double value) {
  POLDER_KERNEL(device(), fill, raw_data(), dtype(), numel(), value);
}

void Tensor::add_(const Tensor& src, double alpha) {
  POLDER_CHECK(src.numel() == numel(), "add_: source of shape {} into a tensor of shape {}", src.shape(),
               shape());
  POLDER_CHECK(src.device() == device(), "add_: source on {} but destination on {}", src.device(), device());
  POLDER_KERNEL(device(), accumulate, raw_data(), dtype(), src.raw_data(), src.dtype(), numel(), alpha);
}

void Tensor::mul_(double alpha) {
  POLDER_DISPATCH_FLOAT(dtype(), "mul_", [&] {
    POLDER_KERNEL(device(), scale, data<scalar_t>(), data<scalar_t>(), numel(), alpha);
  });
}

void Tensor::zero_() {
  // Not a kernel: a memset on the host, a stream-ordered one on the device.
  dispatch::on_device(
      "zero_", device(), [&] { std::memset(raw_data(), 0, nbytes()); },
      [&](void*) { cuda::memset_zero(raw_data(), nbytes(), device().index); });
}

bool Tensor::requires_grad() const {
  return checked(impl_)->requires_grad;
}

Tensor& Tensor::set_requires_grad(bool value) {
  POLDER_CHECK(!value || is_floating(dtype()),
               "set_requires_grad: only floating tensors can require grad, not {}", dtype());
  POLDER_CHECK(is_leaf() || value, "set_requires_grad(false) on a non-leaf tensor; use detach()");
  checked(impl_)->requires_grad = value;
  return *this;
}

bool Tensor::is_leaf() const {
  return checked(impl_)->grad_fn == nullptr;
}
Tensor& Tensor::grad() const {
  return checked(impl_)->grad;
}
const std::shared_ptr<Node>& Tensor::grad_fn() const {
  return checked(impl_)->grad_fn;
}
int Tensor::output_nr() const {
  return checked(impl_)->output_nr;
}
const std::string& Tensor::name() const {
  return checked(impl_)->name;
}
Tensor& Tensor::set_name(std::string n) {
  checked(impl_)->name = std::move(n);
  return *this;
}

Tensor Tensor::detach() const {
  return make_view(*this, shape(), offset());
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  autograd::backward({*this}, {grad}, retain_graph);
}

std::string Tensor::to_string(int64_t max_per_dim) const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream os;
  os << "Tensor(shape=" << shape_str(shape()) << ", dtype=" << dtype() << ", device=" << device();
  if (requires_grad()) os << ", requires_grad";
  os << ")\n";
  Tensor h = to(Device::cpu()).to(DType::f64);
  const double* v = h.data<double>();
  int64_t cols = dim() == 0 ? 1 : shape().back();
  int64_t rows = cols == 0 ? 0 : numel() / cols;
  os << std::setprecision(6);
  for (int64_t r = 0; r < rows; ++r) {
    if (r == max_per_dim && rows > 2 * max_per_dim) {
      os << "  ...\n";
      r = rows - max_per_dim;
    }
    os << "  [";
    for (int64_t c = 0; c < cols; ++c) {
      if (c == max_per_dim && cols > 2 * max_per_dim) {
        os << " ...";
        c = cols - max_per_dim;
      }
      os << (c ? ", " : "") << v[r * cols + c];
    }
    os << "]\n";
  }
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  return os << t.to_string();
}

}  // namespace polder
