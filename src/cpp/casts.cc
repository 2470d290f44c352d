#include "casts.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>

namespace keras_spark {
namespace {

struct BoolByte {  // a bool target: one byte, 0 or 1, whatever the source value
  uint8_t value;
};

template <typename Dst, typename Src>
inline void store(Dst& dst, Src value) {
  dst = static_cast<Dst>(value);
}
template <typename Src>
inline void store(BoolByte& dst, Src value) {
  dst.value = value != 0;
}

// 2**digits of an integer type, exactly, as a double: the first value past its range.
template <typename T>
constexpr double integer_limit() {
  return static_cast<double>(uint64_t{1} << (std::numeric_limits<T>::digits - 1)) * 2.0;
}

// Whether every Src value converts to Dst without leaving its range (then no check is needed).
template <typename Dst, typename Src>
constexpr bool always_fits() {
  if constexpr (std::is_same_v<Dst, BoolByte> || std::is_same_v<Src, Dst>) return true;
  else if constexpr (std::is_floating_point_v<Dst>) return !(std::is_same_v<Dst, float> && std::is_same_v<Src, double>);
  else if constexpr (std::is_floating_point_v<Src>) return false;
  else
    return static_cast<__int128>(std::numeric_limits<Src>::min()) >= std::numeric_limits<Dst>::min() &&
           static_cast<__int128>(std::numeric_limits<Src>::max()) <= std::numeric_limits<Dst>::max();
}

template <typename Dst, typename Src>
inline bool fits(Src v) {
  if constexpr (always_fits<Dst, Src>()) {
    return true;
  } else if constexpr (std::is_floating_point_v<Dst>) {  // double -> float: finite stays finite
    return !(std::fabs(v) > FLT_MAX) || std::isinf(v);
  } else if constexpr (std::is_floating_point_v<Src>) {  // truncation toward zero must land in range (NaN never does)
    constexpr double limit = integer_limit<Dst>();
    return std::is_signed_v<Dst> ? (v >= -limit && v < limit) : (v > -1.0 && v < limit);
  } else {
    const __int128 wide = v;
    return wide >= std::numeric_limits<Dst>::min() && wide <= std::numeric_limits<Dst>::max();
  }
}

// x * 0 is NaN exactly when x is NaN or infinite; independent lane sums vectorize without
// -ffast-math, so the common all-finite case costs one streaming pass.
template <typename Src>
bool all_finite(const Src* x, int64_t n) {
  constexpr int kLanes = 64 / sizeof(Src);
  Src lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) lanes[k] += x[i + k] * Src(0);
  Src sum = 0;
  for (; i < n; ++i) sum += x[i] * Src(0);
  for (int k = 0; k < kLanes; ++k) sum += lanes[k];
  return sum == sum;
}

template <typename Src>
int64_t first_non_finite(const Src* src, int64_t n) {
  if (all_finite(src, n)) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(src[i])) return i;
  return -1;
}

template <typename Dst, typename Src>
CastResult cast_copy(const Src* src, int64_t n, Dst* dst, bool allow_non_finite) {
  if (n <= 0) return {};
  if constexpr (std::is_floating_point_v<Src>) {
    if (!allow_non_finite) {
      const int64_t i = first_non_finite(src, n);
      if (i >= 0) return {i, ValueProblem::NonFinite};
    }
  }
  if constexpr (!always_fits<Dst, Src>()) {
    bool all = true;
    for (int64_t i = 0; i < n; ++i) all &= fits<Dst>(src[i]);
    if (!all)
      for (int64_t i = 0; i < n; ++i)
        if (!fits<Dst>(src[i])) return {i, ValueProblem::OutOfRange};
  }
  if constexpr (std::is_same_v<Src, Dst>) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(Dst));
  } else {
    for (int64_t i = 0; i < n; ++i) store(dst[i], src[i]);
  }
  return {};
}

template <typename Dst>
CastResult copy_from(char format, const void* values, int64_t physical, int64_t n, bool allow, Dst* out) {
  switch (format) {
    case 'b': {  // a bitmap of 0/1: fits every dtype
      const uint8_t* bits = static_cast<const uint8_t*>(values);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = physical + i;
        store(out[i], static_cast<uint8_t>((bits[p >> 3] >> (p & 7)) & 1));
      }
      return {};
    }
#define KS_CASE(ch, T) \
  case ch:             \
    return cast_copy<Dst, T>(static_cast<const T*>(values) + physical, n, out, allow);
    KS_CASE('c', int8_t)
    KS_CASE('C', uint8_t)
    KS_CASE('s', int16_t)
    KS_CASE('S', uint16_t)
    KS_CASE('i', int32_t)
    KS_CASE('I', uint32_t)
    KS_CASE('l', int64_t)
    KS_CASE('L', uint64_t)
    KS_CASE('f', float)
    KS_CASE('g', double)
#undef KS_CASE
  }
  throw ColumnError(std::string("internal: unsupported leaf format ") + format);
}

}  // namespace

CastResult cast_values(char format, const void* values, int64_t physical, int64_t n, DType dtype, bool allow,
                       uint8_t* out) {
  if (n <= 0) return {};  // a zero-width copy: `values` and `out` may be null
  switch (dtype) {
    case DType::Bool: return copy_from(format, values, physical, n, allow, reinterpret_cast<BoolByte*>(out));
    case DType::Int8: return copy_from(format, values, physical, n, allow, reinterpret_cast<int8_t*>(out));
    case DType::Int16: return copy_from(format, values, physical, n, allow, reinterpret_cast<int16_t*>(out));
    case DType::Int32: return copy_from(format, values, physical, n, allow, reinterpret_cast<int32_t*>(out));
    case DType::Int64: return copy_from(format, values, physical, n, allow, reinterpret_cast<int64_t*>(out));
    case DType::UInt8: return copy_from(format, values, physical, n, allow, reinterpret_cast<uint8_t*>(out));
    case DType::UInt16: return copy_from(format, values, physical, n, allow, reinterpret_cast<uint16_t*>(out));
    case DType::UInt32: return copy_from(format, values, physical, n, allow, reinterpret_cast<uint32_t*>(out));
    case DType::UInt64: return copy_from(format, values, physical, n, allow, reinterpret_cast<uint64_t*>(out));
    case DType::Float32: return copy_from(format, values, physical, n, allow, reinterpret_cast<float*>(out));
    case DType::Float64: return copy_from(format, values, physical, n, allow, reinterpret_cast<double*>(out));
  }
  return {};
}

std::string value_text(char format, const void* values, int64_t p) {
  std::ostringstream out;
  out.precision(17);
  switch (format) {
    case 'b': out << (((static_cast<const uint8_t*>(values)[p >> 3] >> (p & 7)) & 1) ? "true" : "false"); break;
    case 'c': out << int{static_cast<const int8_t*>(values)[p]}; break;
    case 'C': out << unsigned{static_cast<const uint8_t*>(values)[p]}; break;
    case 's': out << static_cast<const int16_t*>(values)[p]; break;
    case 'S': out << static_cast<const uint16_t*>(values)[p]; break;
    case 'i': out << static_cast<const int32_t*>(values)[p]; break;
    case 'I': out << static_cast<const uint32_t*>(values)[p]; break;
    case 'l': out << static_cast<const int64_t*>(values)[p]; break;
    case 'L': out << static_cast<const uint64_t*>(values)[p]; break;
    case 'f': out << static_cast<const float*>(values)[p]; break;
    case 'g': out << static_cast<const double*>(values)[p]; break;
  }
  return out.str();
}

std::string dtype_range(DType dtype) {
  auto range = [](auto lo, auto hi) { return std::to_string(lo) + ".." + std::to_string(hi); };
  switch (dtype) {
    case DType::Int8: return range(INT8_MIN, INT8_MAX);
    case DType::Int16: return range(INT16_MIN, INT16_MAX);
    case DType::Int32: return range(INT32_MIN, INT32_MAX);
    case DType::Int64: return range(INT64_MIN, INT64_MAX);
    case DType::UInt8: return range(0, UINT8_MAX);
    case DType::UInt16: return range(0, UINT16_MAX);
    case DType::UInt32: return range(0u, UINT32_MAX);
    case DType::UInt64: return range(0ull, UINT64_MAX);
    case DType::Float32: return "finite float32, |x| <= 3.4028235e38";
    default: return "any";
  }
}

}  // namespace keras_spark
