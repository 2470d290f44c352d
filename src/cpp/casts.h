// The leaf copy: contiguous Arrow numbers cast to a dtype in one tight loop, with the
// checks that keep a cast honest (NaN/infinite floats, integers the dtype cannot hold).
#pragma once

#include <cstdint>
#include <string>

#include "columns.h"

namespace keras_spark {

enum class ValueProblem { None, NonFinite, OutOfRange };

struct CastResult {
  int64_t index = -1;  // first offending value, relative to the first copied; -1 when all are fine
  ValueProblem problem = ValueProblem::None;
};

// Values [physical, physical + n) of a Number buffer with Arrow `format` -> `out` as `dtype`.
// On a problem nothing is promised about `out`.
CastResult cast_values(char format, const void* values, int64_t physical, int64_t n, DType dtype,
                       bool allow_non_finite, uint8_t* out);

// The value at `physical`, as text for an error message.
std::string value_text(char format, const void* values, int64_t physical);

// The values `dtype` can hold, as text ("-128..127").
std::string dtype_range(DType dtype);

}  // namespace keras_spark
