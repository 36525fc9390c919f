// The element types polder stores. A plain enum shared by kernels/ (a leaf) and core/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "kernels/half.h"

namespace polder {

enum class DType : uint8_t { f32, bf16, f16, f64, i32, i64, u8 };

// Bytes of one element (core's dtype_size; the benchmarks' buffer sizes).
constexpr size_t dtype_bytes(DType d) {
  switch (d) {
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::bf16:
    case DType::f16:
      return 2;
    case DType::u8:
      return 1;
  }
  return 0;
}

template <typename T>
constexpr DType dtype_of();

// Calls f(T{}) with T the C++ type of `d` (host code; kernels/ is a leaf, so no polder::Error here: an
// unknown value throws std::invalid_argument).
template <typename F>
void visit_dtype(DType d, F&& f);
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::bf16;
}
template <>
constexpr DType dtype_of<f16>() {
  return DType::f16;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::u8;
}

template <typename F>
void visit_dtype(DType d, F&& f) {
  switch (d) {
    case DType::f32:
      f(float{});
      return;
    case DType::f64:
      f(double{});
      return;
    case DType::bf16:
      f(bf16{});
      return;
    case DType::f16:
      f(f16{});
      return;
    case DType::i32:
      f(int32_t{});
      return;
    case DType::i64:
      f(int64_t{});
      return;
    case DType::u8:
      f(uint8_t{});
      return;
  }
  throw std::invalid_argument("unknown dtype");
}

}  // namespace polder
