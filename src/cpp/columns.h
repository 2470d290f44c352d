// Typed views over Arrow arrays and their conversion to dense row-major tensors.
//
// A column is a number, a list of numbers nested to any depth (list, large_list,
// fixed_size_list), or Spark ML's vector struct. Conversion checks what Keras
// cannot: nulls anywhere, list lengths against the per-row shape, and casts to
// the target dtype in one tight loop over the contiguous leaf values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "arrow_c.h"

namespace keras_spark {

// Bad data or an unsupported type; `row` is the row within the converted array, or -1.
class ColumnError : public std::runtime_error {
 public:
  explicit ColumnError(const std::string& message, int64_t row = -1) : std::runtime_error(message), row(row) {}
  int64_t row;
};

enum class DType { Bool, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float32, Float64 };

DType parse_dtype(const std::string& name);
const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

// What a column must become: a dense tensor of `dtype` with per-row `shape`
// (-1 = decided by the first row converted, then fixed for every later row).
struct ColumnTarget {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;

  bool resolved() const;
  int64_t row_elements() const;  // product of shape; requires resolved()
  size_t row_bytes() const { return static_cast<size_t>(row_elements()) * dtype_size(dtype); }
  std::string shape_text() const;
};

// Arrow type of `schema` in words ("string", "list<float>", "decimal128(10, 2)").
std::string describe_arrow_type(const ArrowSchema& schema);

// Rows [begin, end) of `array` (a column, possibly a child of a struct whose own
// offset is `parent_offset`) written densely to `out`, which must hold
// (end - begin) * target.row_bytes() bytes. Resolves unknown dims of `target` from
// row `begin` first: call `resolve_shape` before sizing `out`.
void resolve_shape(const ArrowSchema& schema, const ArrowArray& array, int64_t parent_offset, int64_t begin,
                   ColumnTarget& target);
void convert_rows(const ArrowSchema& schema, const ArrowArray& array, int64_t parent_offset, int64_t begin,
                  int64_t end, const ColumnTarget& target, uint8_t* out);

}  // namespace keras_spark
