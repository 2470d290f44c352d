// Arrow columns (read through arrow_reader.h) converted to dense row-major tensors.
//
// A column is a number, a list of numbers nested to any depth (list, large_list,
// fixed_size_list), Spark ML's vector struct (alone or inside lists), or any of these
// dictionary-encoded. Conversion checks what Keras cannot: nulls anywhere, list lengths
// against the per-row shape, NaN/infinite floats, and values the dtype cannot hold; the
// contiguous leaf values are cast in one tight loop (casts.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "arrow_reader.h"

namespace keras_spark {

enum class DType { Bool, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float32, Float64 };

DType parse_dtype(const std::string& name);
const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

// An image column (binary JPEG/PNG or Spark's image struct) and how its pixels meet the per-row
// shape (h, w, c): NotImage for every other column (image_decode.h).
enum class ImageFit { NotImage, Exact, Resize, CenterCrop };

// What a column must become: a dense tensor of `dtype` with per-row `shape`
// (-1 = decided by the first row converted, then fixed for every later row).
// NaN and infinite float values are errors unless `allow_non_finite`; integer values
// the dtype cannot represent always are.
struct ColumnTarget {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  bool allow_non_finite = false;
  ImageFit image = ImageFit::NotImage;

  bool resolved() const;
  int64_t row_elements() const;  // product of shape; requires resolved(); ColumnError past int64
  size_t row_bytes() const;
  size_t bytes_for(int64_t rows) const;  // rows * row_bytes(); ColumnError when it cannot be addressed
  std::string shape_text() const;
};

// Resolves unknown dims of `target` from row `begin` of `column` and checks that row
// against the known ones: call before sizing the output of `convert_rows`.
void resolve_shape(const ArrowView& column, int64_t begin, ColumnTarget& target);

// Rows [begin, end) of `column` written densely to `out`, which must hold
// target.bytes_for(end - begin) bytes. Throws ColumnError naming the column and row.
void convert_rows(const ArrowView& column, int64_t begin, int64_t end, const ColumnTarget& target, uint8_t* out);

}  // namespace keras_spark
