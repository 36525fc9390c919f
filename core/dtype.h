// DType and Device: what a tensor's bytes mean and where they live.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>

#include "kernels/dtype.h"

namespace polder {

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(const std::string& name);  // "f32", "bf16", ...; polder::Error naming the choices
inline bool is_floating(DType d) {
  return d == DType::f32 || d == DType::bf16 || d == DType::f16 || d == DType::f64;
}
inline std::ostream& operator<<(std::ostream& os, DType d) {
  return os << dtype_name(d);
}

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device&) const = default;
};
std::ostream& operator<<(std::ostream& os, Device d);

// Calls fn(T{}) with T the C++ type of a floating dtype; polder::Error for other dtypes, naming `what`.
#define POLDER_DISPATCH_FLOAT(dtype, what, ...)                                                     \
  [&] {                                                                                             \
    switch (dtype) {                                                                                \
      case ::polder::DType::f32: {                                                                  \
        using scalar_t = float;                                                                     \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      case ::polder::DType::f64: {                                                                  \
        using scalar_t = double;                                                                    \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      case ::polder::DType::bf16: {                                                                 \
        using scalar_t = ::polder::bf16;                                                            \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      case ::polder::DType::f16: {                                                                  \
        using scalar_t = ::polder::f16;                                                             \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      default:                                                                                      \
        POLDER_FAIL("{}: dtype {} is not supported (expected f32, f64, bf16 or f16)", what, dtype); \
    }                                                                                               \
  }()

#define POLDER_DISPATCH_ALL(dtype, what, ...) \
  [&] {                                       \
    switch (dtype) {                          \
      case ::polder::DType::f32: {            \
        using scalar_t = float;               \
        return __VA_ARGS__();                 \
      }                                       \
      case ::polder::DType::f64: {            \
        using scalar_t = double;              \
        return __VA_ARGS__();                 \
      }                                       \
      case ::polder::DType::bf16: {           \
        using scalar_t = ::polder::bf16;      \
        return __VA_ARGS__();                 \
      }                                       \
      case ::polder::DType::f16: {            \
        using scalar_t = ::polder::f16;       \
        return __VA_ARGS__();                 \
      }                                       \
      case ::polder::DType::i32: {            \
        using scalar_t = int32_t;             \
        return __VA_ARGS__();                 \
      }                                       \
      case ::polder::DType::i64: {            \
        using scalar_t = int64_t;             \
        return __VA_ARGS__();                 \
      }                                       \
      case ::polder::DType::u8: {             \
        using scalar_t = uint8_t;             \
        return __VA_ARGS__();                 \
      }                                       \
    }                                         \
    POLDER_FAIL("{}: unknown dtype", what);   \
  }()

}  // namespace polder
