// Tensor: a cheap shared handle over storage (device, bytes, allocator) with shape, dtype and byte offset.
// Tensors are contiguous; view/reshape/narrow share storage when the result is contiguous, otherwise the
// differentiable ops in core/ops.h copy. Methods here do not record autograd history (ops::* do).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace polder {

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

// Owns bytes on a device. CPU memory is 64-byte aligned; CUDA memory comes from the stream-ordered pool.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  // ZeRO-3's gathered parameters: release() gives the memory back but keeps the object, so every view and
  // every tensor an autograd node saved stays valid as a handle; materialize() allocates it again (contents
  // unspecified, to be filled). Touching the data in between reads a null pointer.
  void release();
  void materialize();
  bool resident() const { return data_ != nullptr || nbytes_ == 0; }
  // Names this memory for caches of derived data (the CPU GEMM's packed weights): unique in the process,
  // and new on every materialize(), so memory given back and handed out again never matches an old name.
  uint64_t generation() const { return generation_; }

 private:
  void* data_ = nullptr;
  uint64_t generation_ = 0;
  size_t nbytes_ = 0;
  Device device_;
};

class Node;
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Factories. Values of empty() are unspecified.
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::cpu());

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  size_t offset() const;  // bytes into the storage
  const std::shared_ptr<Storage>& storage() const;

  void* raw_data() const;
  template <typename T>
  T* data() const {
    POLDER_CHECK(dtype() == dtype_of<T>(), "tensor is {} but data<{}>() was asked", dtype(),
                 dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw_data());
  }
  template <typename T>
  std::vector<T> to_vector() const;  // copies to host; the dtype must match T
  double item() const;               // one-element tensor as double

  // Views sharing storage (no autograd history).
  Tensor view(const Shape& shape) const;                            // one dimension may be -1
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;  // only when the result is contiguous
  bool narrow_is_view(int64_t dim, int64_t start, int64_t length) const;
  Tensor contiguous() const {
    return *this;
  }  // every tensor is contiguous; kept for readability at call sites

  // Copies.
  Tensor clone() const;
  Tensor to(DType dtype) const;    // returns *this when already of that dtype
  Tensor to(Device device) const;  // returns *this when already there
  void copy_(const Tensor& src);   // same shape; converts dtype and device
  void fill_(double value);
  void zero_();
  // In place, on the tensor's device, no autograd: this += alpha * src (src converted to this dtype, same
  // device and element count) and this *= alpha. Gradient buffers, ZeRO shards and clipping use them.
  void add_(const Tensor& src, double alpha = 1.0);
  void mul_(double alpha);

  // Autograd.
  bool requires_grad() const;
  Tensor& set_requires_grad(bool value);
  bool is_leaf() const;
  Tensor& grad() const;  // reference to the accumulated gradient (undefined until backward or assignment)
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  Tensor detach() const;  // shares storage, no history
  const std::string& name() const;
  Tensor& set_name(std::string name);

  std::string to_string(int64_t max_per_dim = 6) const;  // for debugging: shape, dtype, device and values
  const std::shared_ptr<TensorImpl>& impl() const { return impl_; }
  bool same_storage(const Tensor& other) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  DType dtype = DType::f32;
  size_t offset = 0;
  // Autograd metadata.
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;           // set on outputs of differentiable ops
  std::shared_ptr<Node> grad_accumulator;  // leaves that require grad: created on first use
  int output_nr = 0;
  std::string name;
  // Called after backward has accumulated into .grad (once per backward pass): data-parallel gradient
  // buckets start their all-reduce from here, overlapping the rest of backward.
  std::function<void()> post_accumulate_hook;
};

// Copies raw bytes between devices (either side may be CPU or CUDA).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  POLDER_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
               "from_vector: {} values do not fill shape {} ({} elements)", values.size(), shape,
               shape_numel(shape));
  Tensor t = empty(shape, dtype_of<T>(), device);
  copy_bytes(t.raw_data(), device, values.data(), Device::cpu(), values.size() * sizeof(T));
  return t;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  POLDER_CHECK(dtype() == dtype_of<T>(), "to_vector: tensor is {} but {} was asked", dtype(),
               dtype_name(dtype_of<T>()));
  std::vector<T> out(static_cast<size_t>(numel()));
  copy_bytes(out.data(), Device::cpu(), raw_data(), device(), out.size() * sizeof(T));
  return out;
}

}  // namespace polder
