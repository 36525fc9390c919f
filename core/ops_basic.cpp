// Elementwise, reduction and shape ops with their backwards.
#include <numeric>

#include "core/ops.h"
#include "core/ops_util.h"
#include "kernels/elementwise.h"

namespace polder::ops {
using namespace detail;
using kernels::BinaryOp;
using kernels::Broadcast;

namespace {

Broadcast broadcast(const char* op, const Shape& a, const Shape& b, Shape& out) {
  const size_t nd = std::max(a.size(), b.size());
  POLDER_CHECK(nd <= static_cast<size_t>(kernels::kMaxDims), "{}: {} dims exceed the supported {}", op, nd,
               kernels::kMaxDims);
  out.assign(nd, 1);
  Broadcast bc;
  bc.ndim = static_cast<int>(nd);
  for (size_t i = 0; i < nd; ++i) {
    int64_t da = i + a.size() >= nd ? a[i + a.size() - nd] : 1;
    int64_t db = i + b.size() >= nd ? b[i + b.size() - nd] : 1;
    POLDER_CHECK(da == db || da == 1 || db == 1,
                 "{}: shapes {} and {} cannot be broadcast (dim {}: {} vs {})", op, a, b, i, da, db);
    out[i] = std::max(da, db);
    if (da == 0 || db == 0) out[i] = 0;
    bc.shape[i] = out[i];
  }
  // Element strides of each operand over the output (0 where it is broadcast).
  int64_t sa = 1, sb = 1;
  for (size_t k = nd; k-- > 0;) {
    int64_t da = k + a.size() >= nd ? a[k + a.size() - nd] : 1;
    int64_t db = k + b.size() >= nd ? b[k + b.size() - nd] : 1;
    bc.a_stride[k] = (da == 1 && out[k] != 1) ? 0 : sa;
    bc.b_stride[k] = (db == 1 && out[k] != 1) ? 0 : sb;
    sa *= da;
    sb *= db;
  }
  bc.numel = shape_numel(out);
  bc.same_shape = a == b;
  return bc;
}

// Sums a gradient of the broadcast output shape down to an operand's shape.
Tensor reduce_to_shape(const Tensor& g, const Shape& shape, const int64_t* stride, const Broadcast& bc) {
  if (g.shape() == shape) return g;
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  POLDER_DISPATCH_FLOAT(g.dtype(), "broadcast backward", [&] {
    POLDER_KERNEL(g.device(), reduce_to, g.data<scalar_t>(), out.data<scalar_t>(), out.numel(), stride, bc);
  });
  return out;
}

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, const Broadcast& bc,
                      const Shape& out_shape) {
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  POLDER_DISPATCH_FLOAT(a.dtype(), "binary op", [&] {
    POLDER_KERNEL(a.device(), binary, op, a.data<scalar_t>(), b.data<scalar_t>(), out.data<scalar_t>(), bc);
  });
  return out;
}

// The broadcast of (output-shaped tensor, operand with `stride`) over the output shape.
Broadcast with_operand(const Broadcast& bc, const int64_t* stride) {
  Broadcast r = bc;
  int64_t dense = 1;
  for (int k = bc.ndim - 1; k >= 0; --k) {
    r.a_stride[k] = dense;
    r.b_stride[k] = stride[k];
    dense *= bc.shape[k];
  }
  r.same_shape = false;
  return r;
}

Tensor binary(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  check_defined(name, a, "a");
  check_defined(name, b, "b");
  check_same_device(name, {{&a, "a"}, {&b, "b"}});
  check_same_dtype(name, a, "a", b, "b");
  check_float(name, a, "a");
  Shape out_shape;
  Broadcast bc = broadcast(name, a.shape(), b.shape(), out_shape);
  Tensor out = binary_forward(op, a, b, bc, out_shape);
  record(name, {a, b}, {&out}, [&] {
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    // mul saves the other operand: d(a*b)/da = b, d(a*b)/db = a.
    Tensor saved_a = (op == BinaryOp::mul && need_b) ? a : Tensor();
    Tensor saved_b = (op == BinaryOp::mul && need_a) ? b : Tensor();
    return [op, saved_a, saved_b, bc, a_shape = a.shape(), b_shape = b.shape(), need_a,
            need_b](std::vector<Tensor>& g) {
      const Tensor& go = g[0];
      Tensor ga, gb;
      if (need_a) {
        Tensor full = go;
        if (op == BinaryOp::mul) {
          Broadcast m = bc.same_shape ? bc : with_operand(bc, bc.b_stride);
          full = binary_forward(BinaryOp::mul, go, saved_b, m, go.shape());
        }
        ga = reduce_to_shape(full, a_shape, bc.a_stride, bc);
      }
      if (need_b) {
        Tensor full = go;
        if (op == BinaryOp::mul) {
          Broadcast m = bc.same_shape ? bc : with_operand(bc, bc.a_stride);
          full = binary_forward(BinaryOp::mul, go, saved_a, m, go.shape());
        } else if (op == BinaryOp::sub) {
          full = scale(go, -1.0);
        }
        gb = reduce_to_shape(full, b_shape, bc.b_stride, bc);
      }
      return std::vector<Tensor>{ga, gb};
    };
  });
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return binary("add", BinaryOp::add, a, b);
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary("sub", BinaryOp::sub, a, b);
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary("mul", BinaryOp::mul, a, b);
}

Tensor scale(const Tensor& x, double alpha) {
  check_defined("scale", x, "x");
  check_float("scale", x, "x");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  POLDER_DISPATCH_FLOAT(x.dtype(), "scale", [&] {
    POLDER_KERNEL(x.device(), scale, x.data<scalar_t>(), out.data<scalar_t>(), x.numel(), alpha);
  });
  record("scale", {x}, {&out},
         [&] { return [alpha](std::vector<Tensor>& g) { return std::vector<Tensor>{scale(g[0], alpha)}; }; });
  return out;
}

namespace {
// x viewed as (outer, reduce, inner) around dim d.
void split_dims(const Shape& s, int64_t d, int64_t& outer, int64_t& reduce, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= s[static_cast<size_t>(i)];
  reduce = s[static_cast<size_t>(d)];
  for (size_t i = static_cast<size_t>(d) + 1; i < s.size(); ++i) inner *= s[i];
}

// y (outer, reduce, inner) = alpha * x (outer, inner) broadcast over the middle: the backward of the
// reductions.
void expand(const Tensor& x, Tensor& y, int64_t outer, int64_t reduce, int64_t inner, double alpha) {
  POLDER_DISPATCH_FLOAT(x.dtype(), "sum backward", [&] {
    POLDER_KERNEL(x.device(), expand_dim, x.data<scalar_t>(), y.data<scalar_t>(), outer, reduce, inner,
                  alpha);
  });
}

Tensor reduce_dim(const char* name, const Tensor& x, int64_t dim, bool keepdim, bool average) {
  check_defined(name, x, "x");
  check_float(name, x, "x");
  const int64_t d = wrap_dim(name, dim, x.dim());
  int64_t outer, reduce, inner;
  split_dims(x.shape(), d, outer, reduce, inner);
  Shape out_shape = x.shape();
  if (keepdim) {
    out_shape[static_cast<size_t>(d)] = 1;
  } else {
    out_shape.erase(out_shape.begin() + d);
  }
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  const double alpha = average ? 1.0 / static_cast<double>(std::max<int64_t>(reduce, 1)) : 1.0;
  POLDER_DISPATCH_FLOAT(x.dtype(), name, [&] {
    POLDER_KERNEL(x.device(), sum_dim, x.data<scalar_t>(), out.data<scalar_t>(), outer, reduce, inner);
    if (average)
      POLDER_KERNEL(x.device(), scale, out.data<scalar_t>(), out.data<scalar_t>(), out.numel(), alpha);
  });
  record(name, {x}, {&out}, [&] {
    return [x_shape = x.shape(), outer, reduce, inner, alpha](std::vector<Tensor>& g) {
      Tensor gx = Tensor::empty(x_shape, g[0].dtype(), g[0].device());
      expand(g[0], gx, outer, reduce, inner, alpha);
      return std::vector<Tensor>{gx};
    };
  });
  return out;
}

Tensor reduce_all(const char* name, const Tensor& x, bool average) {
  check_defined(name, x, "x");
  check_float(name, x, "x");
  const int64_t n = x.numel();
  const double alpha = average ? 1.0 / static_cast<double>(std::max<int64_t>(n, 1)) : 1.0;
  Tensor out;
  POLDER_DISPATCH_FLOAT(x.dtype(), name, [&] {
    // The CPU sum returns a double (the result is a host scalar); the CUDA one writes a device scalar.
    dispatch::on_device(
        name, x.device(),
        [&] { out = Tensor::scalar(kernels::cpu::sum(x.data<scalar_t>(), n) * alpha, x.dtype()); },
        [&]([[maybe_unused]] void* stream) {
          out = Tensor::empty({}, x.dtype(), x.device());  // stays on the device: no host synchronisation
          POLDER_CUDA_KERNEL(kernels::cuda::sum(x.data<scalar_t>(), out.data<scalar_t>(), n, alpha, stream));
        });
  });
  record(name, {x}, {&out}, [&] {
    return [x_shape = x.shape(), n, alpha](std::vector<Tensor>& g) {
      Tensor gx = Tensor::empty(x_shape, g[0].dtype(), g[0].device());
      expand(g[0], gx, 1, n, 1, alpha);
      return std::vector<Tensor>{gx};
    };
  });
  return out;
}
}  // namespace

Tensor sum(const Tensor& x) {
  return reduce_all("sum", x, false);
}
Tensor mean(const Tensor& x) {
  return reduce_all("mean", x, true);
}
Tensor sum(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce_dim("sum", x, dim, keepdim, false);
}
Tensor mean(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce_dim("mean", x, dim, keepdim, true);
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined("reshape", x, "x");
  Tensor out = x.view(shape);
  record("reshape", {x}, {&out}, [&] {
    return [x_shape = x.shape()](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].view(x_shape)}; };
  });
  return out;
}

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1) {
  check_defined("transpose", x, "x");
  int64_t a = wrap_dim("transpose", dim0, x.dim()), b = wrap_dim("transpose", dim1, x.dim());
  if (a > b) std::swap(a, b);
  Shape out_shape = x.shape();
  std::swap(out_shape[static_cast<size_t>(a)], out_shape[static_cast<size_t>(b)]);
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  if (a == b) {
    out.copy_(x);
  } else {
    const Shape& s = x.shape();
    int64_t outer = 1, mid = 1, inner = 1;
    for (int64_t i = 0; i < a; ++i) outer *= s[static_cast<size_t>(i)];
    for (int64_t i = a + 1; i < b; ++i) mid *= s[static_cast<size_t>(i)];
    for (size_t i = static_cast<size_t>(b) + 1; i < s.size(); ++i) inner *= s[i];
    const int64_t da = s[static_cast<size_t>(a)], db = s[static_cast<size_t>(b)];
    POLDER_KERNEL(x.device(), transpose, x.raw_data(), out.raw_data(), dtype_size(x.dtype()), outer, da, mid,
                  db, inner);
  }
  record("transpose", {x}, {&out}, [&] {
    return [a, b](std::vector<Tensor>& g) { return std::vector<Tensor>{transpose(g[0], a, b)}; };
  });
  return out;
}

namespace {
// Copies x into the slab [start, start + x.size(d)) of dim d of out (same shape elsewhere), or the reverse.
void copy_slab(const Tensor& src, const Tensor& dst, int64_t d, int64_t start, bool into_dst) {
  const Tensor& small = into_dst ? src : dst;
  const Tensor& big = into_dst ? dst : src;
  int64_t outer, len, inner, big_len;
  split_dims(small.shape(), d, outer, len, inner);
  big_len = big.size(d);
  const int64_t es = static_cast<int64_t>(dtype_size(src.dtype()));
  char* big_ptr = static_cast<char*>(big.raw_data()) + start * inner * es;
  POLDER_CHECK(src.device() == dst.device(), "copy_slab: source on {} but destination on {}", src.device(),
               dst.device());
  const void* from = into_dst ? small.raw_data() : big_ptr;
  void* to = into_dst ? big_ptr : small.raw_data();
  const int64_t from_pitch = (into_dst ? len : big_len) * inner * es,
                to_pitch = (into_dst ? big_len : len) * inner * es;
  POLDER_KERNEL(src.device(), copy_blocks, from, from_pitch, to, to_pitch, outer, len * inner * es);
}
}  // namespace

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  check_defined("narrow", x, "x");
  const int64_t d = wrap_dim("narrow", dim, x.dim());
  POLDER_CHECK(start >= 0 && length >= 0 && start + length <= x.size(d),
               "narrow: [{}, {}) is out of range for dim {} of size {} (shape {})", start, start + length,
               dim, x.size(d), x.shape());
  Tensor out;
  if (x.narrow_is_view(d, start, length)) {
    out = x.narrow(d, start, length).detach();
  } else {
    Shape s = x.shape();
    s[static_cast<size_t>(d)] = length;
    out = Tensor::empty(s, x.dtype(), x.device());
    copy_slab(x, out, d, start, false);
  }
  record("narrow", {x}, {&out}, [&] {
    return [x_shape = x.shape(), d, start](std::vector<Tensor>& g) {
      Tensor gx = Tensor::zeros(x_shape, g[0].dtype(), g[0].device());
      copy_slab(g[0], gx, d, start, true);
      return std::vector<Tensor>{gx};
    };
  });
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  POLDER_CHECK(!xs.empty(), "concat: no tensors given");
  for (const Tensor& x : xs) check_defined("concat", x, "an input");
  const Tensor& first = xs[0];
  const int64_t d = wrap_dim("concat", dim, first.dim());
  Shape out_shape = first.shape();
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_same_device("concat", {{&first, "input 0"}, {&xs[i], "another input"}});
    check_same_dtype("concat", first, "input 0", xs[i], "another input");
    Shape s = xs[i].shape();
    POLDER_CHECK(s.size() == out_shape.size(), "concat: input {} has shape {} but input 0 has shape {}", i, s,
                 first.shape());
    s[static_cast<size_t>(d)] = out_shape[static_cast<size_t>(d)];
    POLDER_CHECK(s == out_shape,
                 "concat: input {} has shape {} but input 0 has shape {} (only dim {} may differ)", i,
                 xs[i].shape(), first.shape(), d);
    total += xs[i].size(d);
  }
  out_shape[static_cast<size_t>(d)] = total;
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  std::vector<int64_t> sizes;
  int64_t start = 0;
  for (const Tensor& x : xs) {
    copy_slab(x, out, d, start, true);
    sizes.push_back(x.size(d));
    start += x.size(d);
  }
  record("concat", xs, {&out}, [&] {
    return [sizes, d, shapes = [&] {
      std::vector<Shape> v;
      for (const Tensor& x : xs) v.push_back(x.shape());
      return v;
    }()](std::vector<Tensor>& g) {
      std::vector<Tensor> gs;
      int64_t off = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        Tensor gi = Tensor::empty(shapes[i], g[0].dtype(), g[0].device());
        copy_slab(g[0], gi, d, off, false);
        gs.push_back(gi);
        off += sizes[i];
      }
      return gs;
    };
  });
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  check_defined("split", x, "x");
  const int64_t d = wrap_dim("split", dim, x.dim());
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  POLDER_CHECK(total == x.size(d), "split: sizes {} sum to {} but dim {} of shape {} has {}", sizes, total,
               dim, x.shape(), x.size(d));
  std::vector<Tensor> outs;
  int64_t start = 0;
  for (int64_t n : sizes) {
    Shape s = x.shape();
    s[static_cast<size_t>(d)] = n;
    Tensor o = Tensor::empty(s, x.dtype(), x.device());
    copy_slab(x, o, d, start, false);
    outs.push_back(o);
    start += n;
  }
  std::vector<Tensor*> ptrs;
  for (Tensor& o : outs) ptrs.push_back(&o);
  record("split", {x}, ptrs, [&] {
    return [x_shape = x.shape(), sizes, d, dtype = x.dtype(), device = x.device()](std::vector<Tensor>& g) {
      Tensor gx = Tensor::zeros(x_shape, dtype, device);
      int64_t off = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (g[i].defined()) copy_slab(g[i].to(dtype), gx, d, off, true);
        off += sizes[i];
      }
      return std::vector<Tensor>{gx};
    };
  });
  return outs;
}

Tensor cast(const Tensor& x, DType dtype) {
  check_defined("cast", x, "x");
  Tensor out = x.dtype() == dtype ? x.detach() : x.to(dtype);
  if (is_floating(dtype)) {
    record("cast", {x}, {&out}, [&] {
      return [src = x.dtype()](std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].to(src)}; };
    });
  }
  return out;
}

}  // namespace polder::ops
