#include "columns.h"

#include <sstream>

#include "casts.h"
#include "image_decode.h"

namespace keras_spark {
namespace {

const char* kDTypeNames[] = {"bool",  "int8",   "int16",  "int32",   "int64",  "uint8",
                             "uint16", "uint32", "uint64", "float32", "float64"};
const size_t kDTypeSizes[] = {1, 1, 2, 4, 8, 1, 2, 4, 8, 4, 8};

std::string shape_of(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out << ", ";
    if (shape[i] < 0) out << "None"; else out << shape[i];
  }
  if (shape.size() == 1) out << ",";
  out << ")";
  return out.str();
}

[[noreturn]] void null_error(const std::string& column, int64_t row, const char* where) {
  throw ColumnError("column '" + column + "' has a null " + where + " at row " + std::to_string(row) +
                        "; keras-spark does not guess values for nulls: drop or fill them in Spark first "
                        "(df.dropna / df.fillna)",
                    row);
}

[[noreturn]] void length_error(const ColumnTarget& t, size_t level, int64_t expected, int64_t found, int64_t row) {
  std::string what = level == 0 ? "an array" : "a nested array at depth " + std::to_string(level + 1);
  throw ColumnError("column '" + t.name + "': expected " + what + " of length " + std::to_string(expected) +
                        " (per-row shape " + t.shape_text() + "), found length " + std::to_string(found) +
                        " at row " + std::to_string(row),
                    row);
}

[[noreturn]] void value_error(const ColumnTarget& t, const CastResult& r, const std::string& value, int64_t row) {
  if (r.problem == ValueProblem::NonFinite)
    throw ColumnError("column '" + t.name + "' has a NaN or infinite value (" + value + ") at row " +
                          std::to_string(row) +
                          "; it would train to a NaN loss: fix or drop such rows in Spark, or pass "
                          "allow_non_finite=True to keep them",
                      row);
  throw ColumnError("column '" + t.name + "' has the value " + value + " at row " + std::to_string(row) + ", which " +
                        dtype_name(t.dtype) + " cannot represent (" + dtype_range(t.dtype) +
                        "): cast the column in Spark or give the Keras input or output a wider dtype",
                    row);
}

void check_supported(const ArrowView& v, const ArrowView& column, const ColumnTarget& t) {
  if (v.kind() == ArrowKind::Unsupported)
    throw ColumnError("column '" + t.name + "' has Arrow type " + describe_arrow_type(column.schema()) +
                      "; expected numbers, lists of numbers (any depth) or a Spark ML vector");
  for (const ArrowView& c : v.children())
    if (v.kind() != ArrowKind::Vector) check_supported(c, column, t);
}

void check_depth(const ArrowView& column, const ColumnTarget& target) {
  check_supported(column, column, target);
  const size_t depth = static_cast<size_t>(column.depth());
  bool ok = target.shape.size() >= depth;
  for (size_t d = depth; ok && d < target.shape.size(); ++d) ok = target.shape[d] == 1 || target.shape[d] == -1;
  if (!ok)
    throw ColumnError("column '" + target.name + "' has Arrow type " + describe_arrow_type(column.schema()) +
                      " (nesting depth " + std::to_string(depth) + "), which does not match the per-row shape " +
                      target.shape_text() + " (rank " + std::to_string(target.shape.size()) + ")");
}

// The row an entry belongs to: entries [first_entry, ...) of one level, `per_row` a row.
struct RowMap {
  int64_t first_row, first_entry, per_row;
  int64_t of(int64_t entry) const { return first_row + (entry - first_entry) / per_row; }
};

// Writes entries [lo, hi) of a view at nesting level `level` of the target's shape.
class Converter {
 public:
  explicit Converter(const ColumnTarget& target) : t_(target), stride_(target.shape.size() + 1) {
    size_t bytes = dtype_size(target.dtype);
    for (size_t d = target.shape.size() + 1; d-- > 0;) {
      stride_[d] = bytes;  // bytes of one entry at level d
      if (d > 0) bytes *= static_cast<size_t>(target.shape[d - 1]);
    }
  }

  void run(const ArrowView& v, int64_t lo, int64_t hi, size_t level, RowMap rows, uint8_t* out) {
    if (hi <= lo) return;
    switch (v.kind()) {
      case ArrowKind::Number: return numbers(v, lo, hi, level, rows, out);
      case ArrowKind::List:
      case ArrowKind::LargeList:
      case ArrowKind::FixedList: return lists(v, lo, hi, level, rows, out);
      case ArrowKind::Vector: return vectors(v, lo, hi, level, rows, out);
      case ArrowKind::Dictionary: return dictionary(v, lo, hi, level, rows, out);
      case ArrowKind::Unsupported: break;
    }
    throw ColumnError("column '" + t_.name + "': internal: conversion of an unsupported kind");
  }

 private:
  size_t stride(size_t level) const { return level < stride_.size() ? stride_[level] : stride_.back(); }

  void cast(const ArrowView& v, int64_t lo, int64_t n, DType dtype, uint8_t* out, const RowMap& rows) const {
    const CastResult r = cast_values(v.number_format(), v.values(), v.physical(lo), n, dtype, t_.allow_non_finite, out);
    if (r.index >= 0) value_error(t_, r, value_text(v.number_format(), v.values(), v.physical(lo + r.index)),
                                  rows.of(lo + r.index));
  }

  void numbers(const ArrowView& v, int64_t lo, int64_t hi, size_t level, RowMap rows, uint8_t* out) const {
    const int64_t j = v.first_null(lo, hi);
    if (j >= 0) null_error(t_.name, rows.of(j), level == 0 ? "value" : "array element");
    cast(v, lo, hi - lo, t_.dtype, out, rows);
  }

  void lists(const ArrowView& v, int64_t lo, int64_t hi, size_t level, RowMap rows, uint8_t* out) {
    const int64_t j = v.first_null(lo, hi);
    if (j >= 0) null_error(t_.name, rows.of(j), level == 0 ? "value" : "nested array element");
    const int64_t dim = t_.shape[level];
    const int64_t i = v.first_length_other_than(dim, lo, hi);
    if (i >= 0) length_error(t_, level, dim, v.list_range(i).length(), rows.of(i));
    if (dim == 0) return;
    const ListRange values = v.list_ranges(lo, hi);  // contiguous: every entry has length dim; checked in bounds
    run(v.child(), values.begin, values.end, level + 1, {rows.first_row, values.begin, rows.per_row * dim}, out);
  }

  void vectors(const ArrowView& v, int64_t lo, int64_t hi, size_t level, RowMap rows, uint8_t* out) {
    const ArrowView &type = v.child(0), &size = v.child(1), &indices = v.child(2), &values = v.child(3);
    const ArrowView &value_items = values.child(), &index_items = indices.child();
    if (value_items.kind() != ArrowKind::Number || index_items.kind() != ArrowKind::Number)
      throw ColumnError("column '" + t_.name + "': a vector's indices and values must be plain numbers");
    const int64_t width = t_.shape[level];
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t row = rows.of(j);
      uint8_t* dst = out + static_cast<size_t>(j - lo) * stride(level);
      if (!v.valid(j) || !type.valid(j) || !values.valid(j)) null_error(t_.name, row, "vector");
      const ListRange r = values.list_range(j);
      if (value_items.first_null(r.begin, r.end) >= 0) null_error(t_.name, row, "vector value");
      const RowMap one{row, r.begin, 1 + r.length()};
      const int64_t kind = type.integer(j);
      if (kind == 1) {
        if (r.length() != width) length_error(t_, level, width, r.length(), row);
        cast(value_items, r.begin, r.length(), t_.dtype, dst, one);
        continue;
      }
      if (kind != 0)
        throw ColumnError("column '" + t_.name + "': vector type " + std::to_string(kind) + " at row " +
                              std::to_string(row) + "; expected 0 (sparse) or 1 (dense)", row);
      const int64_t found = size.valid(j) ? size.integer(j) : -1;
      if (found != width) length_error(t_, level, width, found, row);
      if (!indices.valid(j)) null_error(t_.name, row, "vector");
      const ListRange ir = indices.list_range(j);
      if (ir.length() != r.length() || index_items.first_null(ir.begin, ir.end) >= 0)
        throw ColumnError("column '" + t_.name + "': sparse vector at row " + std::to_string(row) +
                              " has unequal indices and values", row);
      sparse_values_.resize(static_cast<size_t>(r.length()));
      cast(value_items, r.begin, r.length(), DType::Float64, reinterpret_cast<uint8_t*>(sparse_values_.data()), one);
      dense_.assign(static_cast<size_t>(width), 0.0);
      for (int64_t k = 0; k < r.length(); ++k) {
        const int64_t index = index_items.integer(ir.begin + k);
        if (index < 0 || index >= width)
          throw ColumnError("column '" + t_.name + "': sparse vector index " + std::to_string(index) +
                                " out of range for size " + std::to_string(width) + " at row " + std::to_string(row),
                            row);
        dense_[static_cast<size_t>(index)] = sparse_values_[static_cast<size_t>(k)];
      }
      const CastResult c = cast_values('g', dense_.data(), 0, width, t_.dtype, true, dst);
      if (c.index >= 0) value_error(t_, c, value_text('g', dense_.data(), c.index), row);
    }
  }

  void dictionary(const ArrowView& v, int64_t lo, int64_t hi, size_t level, RowMap rows, uint8_t* out) {
    const int64_t j = v.first_null(lo, hi);
    if (j >= 0) null_error(t_.name, rows.of(j), level == 0 ? "value" : "array element");
    const ArrowView& values = v.child();
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t index = v.integer(i);
      if (index < 0 || index >= values.length())
        throw ColumnError("column '" + t_.name + "': dictionary index " + std::to_string(index) + " at row " +
                              std::to_string(rows.of(i)) + " is outside its dictionary of " +
                              std::to_string(values.length()) + " values", rows.of(i));
      run(values, index, index + 1, level, {rows.of(i), index, 1}, out + static_cast<size_t>(i - lo) * stride(level));
    }
  }

  const ColumnTarget& t_;
  std::vector<size_t> stride_;
  std::vector<double> dense_, sparse_values_;  // one sparse vector at a time
};

}  // namespace

DType parse_dtype(const std::string& name) {
  for (size_t i = 0; i < sizeof(kDTypeNames) / sizeof(kDTypeNames[0]); ++i)
    if (name == kDTypeNames[i]) return static_cast<DType>(i);
  throw ColumnError("unsupported dtype '" + name + "'");
}

const char* dtype_name(DType dtype) { return kDTypeNames[static_cast<int>(dtype)]; }
size_t dtype_size(DType dtype) { return kDTypeSizes[static_cast<int>(dtype)]; }

bool ColumnTarget::resolved() const {
  for (int64_t d : shape)
    if (d < 0) return false;
  return true;
}

int64_t ColumnTarget::row_elements() const {
  int64_t n = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n))
      throw ColumnError("column '" + name + "': the per-row shape " + shape_text() +
                        " has more elements than 64 bits can count; check the Keras input's shape");
  return n;
}

size_t ColumnTarget::row_bytes() const { return bytes_for(1); }

size_t ColumnTarget::bytes_for(int64_t rows) const {
  int64_t bytes = 0;
  if (rows < 0 || __builtin_mul_overflow(row_elements(), static_cast<int64_t>(dtype_size(dtype)), &bytes) ||
      __builtin_mul_overflow(bytes, rows, &bytes))
    throw ColumnError("column '" + name + "': " + std::to_string(rows) + " rows of per-row shape " + shape_text() +
                      " as " + dtype_name(dtype) + " are more bytes than memory can address");
  return static_cast<size_t>(bytes);
}

std::string ColumnTarget::shape_text() const { return shape_of(shape); }

void resolve_shape(const ArrowView& column, int64_t begin, ColumnTarget& target) {
  if (target.image != ImageFit::NotImage) return check_image_target(column, target);  // its shape is the input's
  check_depth(column, target);
  for (size_t d = static_cast<size_t>(column.depth()); d < target.shape.size(); ++d) target.shape[d] = 1;
  const ArrowView* v = &column;
  int64_t j = begin;
  size_t level = 0;
  while (begin < column.length()) {  // the first row: its lengths decide unknown dims and must match known ones
    if (!v->valid(j)) null_error(target.name, begin, level == 0 ? "value" : "nested array");
    int64_t length = 0;
    if (v->kind() == ArrowKind::Number) {
      break;
    } else if (v->kind() == ArrowKind::Dictionary) {
      j = v->integer(j);
      if (j < 0 || j >= v->child().length())
        throw ColumnError("column '" + target.name + "': dictionary index " + std::to_string(j) + " at row " +
                          std::to_string(begin) + " is outside its dictionary", begin);
      v = &v->child();
      continue;
    } else if (v->kind() == ArrowKind::Vector) {
      const ArrowView& values = v->child(3);
      if (!v->child(0).valid(j) || !values.valid(j)) null_error(target.name, begin, "vector");
      const bool dense = v->child(0).integer(j) == 1;
      if (!dense && !v->child(1).valid(j)) null_error(target.name, begin, "vector size");
      length = dense ? values.list_range(j).length() : v->child(1).integer(j);
    } else {
      const ListRange r = v->list_range(j);
      length = r.length();
      j = r.begin;
    }
    if (target.shape[level] < 0) target.shape[level] = length;
    if (target.shape[level] != length) length_error(target, level, target.shape[level], length, begin);
    if (v->kind() == ArrowKind::Vector) break;
    if (length == 0) {
      if (!target.resolved())
        throw ColumnError("column '" + target.name + "' has an empty array at row " + std::to_string(begin) +
                          ", so its per-row shape cannot be inferred", begin);
      break;
    }
    v = &v->child();
    ++level;
  }
  if (target.resolved()) target.row_bytes();  // a shape past 64 bits is an error here, naming the column
}

void convert_rows(const ArrowView& column, int64_t begin, int64_t end, const ColumnTarget& target, uint8_t* out) {
  if (end <= begin) return;
  if (begin < 0 || end > column.length())
    throw ColumnError("column '" + target.name + "': internal: rows outside the array");
  if (target.image != ImageFit::NotImage) return convert_image_rows(column, begin, end, target, out);
  check_depth(column, target);
  target.bytes_for(end - begin);
  Converter(target).run(column, begin, end, 0, {begin, begin, 1}, out);
}

}  // namespace keras_spark
