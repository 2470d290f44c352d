// One Arrow reader: an Arrow array's format parsed once into a kind, with nulls, list
// offsets and integers read through one accessor (in the spirit of nanoarrow's
// ArrowArrayView). Columns (conversion to dense tensors) and the cache writer (partition
// ids) both read Arrow through it; a new column kind is a new case here.
//
// Parsing checks the structure the C data interface promises (buffer and child counts,
// present buffers, offsets inside the child), so malformed input is an error, never a
// read out of bounds.
#pragma once

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

enum class ArrowKind {
  Number,      // bool or a fixed-width integer or float ("bcCsSiIlLfg")
  List,        // int32 offsets
  LargeList,   // int64 offsets
  FixedList,   // fixed_size_list
  Vector,      // Spark ML's VectorUDT: struct<type: int8, size: int32, indices: list<int32>, values: list<number>>
  Dictionary,  // integer indices into a dictionary of values (children[0])
  Unsupported  // anything else: described in errors, never read
};

// Logical range [begin, end) of a list entry's values in the child.
struct ListRange {
  int64_t begin;
  int64_t end;
  int64_t length() const { return end - begin; }
};

// A view of `length` logical entries of an array, entry i at physical index `first + i`.
// Children of lists and dictionaries are views of the whole child array; children of a
// struct (a vector) start where the struct's own entries start.
class ArrowView {
 public:
  ArrowView(const ArrowSchema& schema, const ArrowArray& array, int64_t first, int64_t length,
            const std::string& column);

  ArrowKind kind() const { return kind_; }
  int64_t length() const { return length_; }
  char number_format() const { return number_format_; }  // Number; Dictionary: the index type
  int64_t fixed_size() const { return fixed_size_; }
  const ArrowSchema& schema() const { return *schema_; }
  const ArrowArray& array() const { return *array_; }  // kinds read outside this reader (images)
  // List kinds: [values]; Vector: [type, size, indices, values]; Dictionary: [dictionary].
  const std::vector<ArrowView>& children() const { return children_; }
  const ArrowView& child(size_t i = 0) const { return children_.at(i); }
  // Nesting of lists above the numbers (a vector counts one; a dictionary counts its values').
  int depth() const;

  bool valid(int64_t i) const {
    if (!validity_) return true;
    const int64_t p = first_ + i;
    return (validity_[p >> 3] >> (p & 7)) & 1;
  }
  int64_t first_null(int64_t begin, int64_t end) const;  // first null entry in [begin, end), or -1
  ListRange list_range(int64_t i) const;                  // list kinds; checked against the child
  ListRange list_ranges(int64_t begin, int64_t end) const;  // values of entries [begin, end)
  // First list entry in [begin, end) whose length is not `length`, or -1 (one tight loop over the offsets).
  int64_t first_length_other_than(int64_t length, int64_t begin, int64_t end) const;
  int64_t integer(int64_t i) const;  // an integer Number (or a Dictionary's index) as int64
  const void* values() const { return values_; }  // Number: the value buffer
  int64_t physical(int64_t i) const { return first_ + i; }

 private:
  void parse(const std::string& column);
  void parse_vector(const std::string& column);
  void need_buffers(int64_t n) const;
  [[noreturn]] void malformed(const std::string& what) const;

  const ArrowSchema* schema_;
  const ArrowArray* array_;
  int64_t first_, length_;
  ArrowKind kind_ = ArrowKind::Unsupported;
  char number_format_ = 0;
  int64_t fixed_size_ = 0;
  const uint8_t* validity_ = nullptr;  // null when the array has no nulls
  const void* values_ = nullptr;       // Number values or list offsets
  std::string column_;
  std::vector<ArrowView> children_;
};

// Arrow type of `schema` in words ("string", "list<float>", "decimal128(10, 2)").
std::string describe_arrow_type(const ArrowSchema& schema);

}  // namespace keras_spark
