#include "columns.h"

#include <cstring>
#include <sstream>
#include <type_traits>

namespace keras_spark {
namespace {

const char* kDTypeNames[] = {"bool",  "int8",   "int16",  "int32",   "int64",  "uint8",
                             "uint16", "uint32", "uint64", "float32", "float64"};
const size_t kDTypeSizes[] = {1, 1, 2, 4, 8, 1, 2, 4, 8, 4, 8};

bool is_numeric_format(const char* f) {
  return f[0] != '\0' && f[1] == '\0' && std::strchr("bcCsSiIlLfg", f[0]) != nullptr;
}

bool valid_at(const ArrowArray& a, int64_t logical) {
  if (a.null_count == 0 || a.n_buffers == 0 || a.buffers[0] == nullptr) return true;
  const int64_t p = a.offset + logical;
  return (static_cast<const uint8_t*>(a.buffers[0])[p >> 3] >> (p & 7)) & 1;
}

// First logical index in [lo, hi) that is null, or -1.
int64_t first_null(const ArrowArray& a, int64_t lo, int64_t hi) {
  if (a.null_count == 0 || a.n_buffers == 0 || a.buffers[0] == nullptr) return -1;
  for (int64_t j = lo; j < hi; ++j)
    if (!valid_at(a, j)) return j;
  return -1;
}

// ---- leaf value copies with casts ----------------------------------------------------------
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

template <typename Dst, typename Src>
void cast_copy(const Src* src, int64_t n, Dst* dst) {
  if constexpr (std::is_same_v<Src, Dst>) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(Dst));
  } else {
    for (int64_t i = 0; i < n; ++i) store(dst[i], src[i]);
  }
}

template <typename Dst>
void copy_from(char format, const void* values, int64_t physical, int64_t n, Dst* out) {
  switch (format) {
    case 'b': {
      const uint8_t* bits = static_cast<const uint8_t*>(values);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = physical + i;
        store(out[i], static_cast<uint8_t>((bits[p >> 3] >> (p & 7)) & 1));
      }
      return;
    }
#define KS_CASE(ch, T) \
  case ch:             \
    return cast_copy<Dst, T>(static_cast<const T*>(values) + physical, n, out);
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

void copy_values(char format, const void* values, int64_t physical, int64_t n, DType dtype, uint8_t* out) {
  switch (dtype) {
    case DType::Bool: return copy_from(format, values, physical, n, reinterpret_cast<BoolByte*>(out));
    case DType::Int8: return copy_from(format, values, physical, n, reinterpret_cast<int8_t*>(out));
    case DType::Int16: return copy_from(format, values, physical, n, reinterpret_cast<int16_t*>(out));
    case DType::Int32: return copy_from(format, values, physical, n, reinterpret_cast<int32_t*>(out));
    case DType::Int64: return copy_from(format, values, physical, n, reinterpret_cast<int64_t*>(out));
    case DType::UInt8: return copy_from(format, values, physical, n, reinterpret_cast<uint8_t*>(out));
    case DType::UInt16: return copy_from(format, values, physical, n, reinterpret_cast<uint16_t*>(out));
    case DType::UInt32: return copy_from(format, values, physical, n, reinterpret_cast<uint32_t*>(out));
    case DType::UInt64: return copy_from(format, values, physical, n, reinterpret_cast<uint64_t*>(out));
    case DType::Float32: return copy_from(format, values, physical, n, reinterpret_cast<float*>(out));
    case DType::Float64: return copy_from(format, values, physical, n, reinterpret_cast<double*>(out));
  }
}

// ---- the shape of a column -------------------------------------------------------------------
struct ListLevel {
  const ArrowArray* array;
  char kind;      // 'l' int32 offsets, 'L' int64 offsets, 'w' fixed size
  int64_t fixed;  // size of a fixed-size list
};

struct VectorFields {  // Spark ML's VectorUDT as Arrow: struct<type, size, indices, values>
  const ArrowArray* type = nullptr;
  const ArrowArray* size = nullptr;
  const ArrowArray* indices = nullptr;  // list<int32>
  const ArrowArray* values = nullptr;   // list<double>
  char values_format = 'g';
};

struct Layout {
  std::vector<ListLevel> levels;
  const ArrowArray* leaf = nullptr;  // numeric leaf (unless vector)
  char leaf_format = 0;
  bool vector = false;
  const ArrowArray* vector_array = nullptr;
  VectorFields fields;
  int depth() const { return static_cast<int>(levels.size()) + (vector ? 1 : 0); }
};

bool parse_vector(const ArrowSchema& s, const ArrowArray& a, Layout& layout) {
  if (std::strcmp(s.format, "+s") != 0 || s.n_children != 4) return false;
  VectorFields f;
  for (int64_t i = 0; i < s.n_children; ++i) {
    const std::string name = s.children[i]->name ? s.children[i]->name : "";
    const ArrowSchema& cs = *s.children[i];
    if (name == "type" && std::strcmp(cs.format, "c") == 0) f.type = a.children[i];
    else if (name == "size" && std::strcmp(cs.format, "i") == 0) f.size = a.children[i];
    else if (name == "indices" && std::strcmp(cs.format, "+l") == 0 && std::strcmp(cs.children[0]->format, "i") == 0)
      f.indices = a.children[i];
    else if (name == "values" && std::strcmp(cs.format, "+l") == 0 && is_numeric_format(cs.children[0]->format)) {
      f.values = a.children[i];
      f.values_format = cs.children[0]->format[0];
    }
  }
  if (!f.type || !f.size || !f.indices || !f.values) return false;
  layout.vector = true;
  layout.vector_array = &a;
  layout.fields = f;
  return true;
}

Layout parse_layout(const ArrowSchema& schema, const ArrowArray& array, const std::string& column) {
  Layout layout;
  const ArrowSchema* s = &schema;
  const ArrowArray* a = &array;
  while (true) {
    const std::string f = s->format;
    if (f == "+l" || f == "+L" || f.rfind("+w:", 0) == 0) {
      layout.levels.push_back({a, f[1] == 'w' ? 'w' : f[1], f[1] == 'w' ? std::stoll(f.substr(3)) : 0});
      s = s->children[0];
      a = a->children[0];
      continue;
    }
    if (is_numeric_format(s->format)) {
      layout.leaf = a;
      layout.leaf_format = s->format[0];
      return layout;
    }
    if (parse_vector(*s, *a, layout)) return layout;
    throw ColumnError("column '" + column + "' has Arrow type " + describe_arrow_type(schema) +
                      "; expected numbers, lists of numbers (any depth) or a Spark ML vector");
  }
}

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

// Length and first child index of list entry `logical` of a list level.
void list_entry(const ListLevel& level, int64_t logical, int64_t& start, int64_t& length) {
  const int64_t p = level.array->offset + logical;
  if (level.kind == 'w') {
    start = p * level.fixed;
    length = level.fixed;
  } else if (level.kind == 'l') {
    const int32_t* off = static_cast<const int32_t*>(level.array->buffers[1]);
    start = off[p];
    length = off[p + 1] - off[p];
  } else {
    const int64_t* off = static_cast<const int64_t*>(level.array->buffers[1]);
    start = off[p];
    length = off[p + 1] - off[p];
  }
}

[[noreturn]] void null_error(const std::string& column, int64_t row, const char* where) {
  throw ColumnError("column '" + column + "' has a null " + where + " at row " + std::to_string(row) +
                        "; keras-spark does not guess values for nulls: drop or fill them in Spark first "
                        "(df.dropna / df.fillna)",
                    row);
}

[[noreturn]] void length_error(const ColumnTarget& t, int level, int64_t expected, int64_t found, int64_t row) {
  std::string what = level == 0 ? "an array" : "a nested array at depth " + std::to_string(level + 1);
  throw ColumnError("column '" + t.name + "': expected " + what + " of length " + std::to_string(expected) +
                        " (per-row shape " + t.shape_text() + "), found length " + std::to_string(found) +
                        " at row " + std::to_string(row),
                    row);
}

void check_depth(const Layout& layout, const ColumnTarget& target, const ArrowSchema& schema) {
  const int depth = layout.depth();
  bool ok = static_cast<int>(target.shape.size()) >= depth;
  for (size_t d = depth; ok && d < target.shape.size(); ++d) ok = target.shape[d] == 1 || target.shape[d] == -1;
  if (!ok)
    throw ColumnError("column '" + target.name + "' has Arrow type " + describe_arrow_type(schema) +
                      " (nesting depth " + std::to_string(depth) + "), which does not match the per-row shape " +
                      target.shape_text() + " (rank " + std::to_string(target.shape.size()) + ")");
}

int64_t vector_type(const VectorFields& f, int64_t logical) {
  return static_cast<const int8_t*>(f.type->buffers[1])[f.type->offset + logical];
}

int64_t vector_size(const VectorFields& f, int64_t logical) {
  return static_cast<const int32_t*>(f.size->buffers[1])[f.size->offset + logical];
}

void convert_vectors(const Layout& L, int64_t lo, int64_t hi, int64_t first_row, const ColumnTarget& t,
                     uint8_t* out) {
  const VectorFields& f = L.fields;
  const int64_t width = t.shape[0];
  const size_t item = dtype_size(t.dtype);
  const ListLevel values_level{f.values, 'l', 0}, indices_level{f.indices, 'l', 0};
  const ArrowArray* values_leaf = f.values->children[0];
  std::vector<double> dense;
  for (int64_t j = lo; j < hi; ++j) {
    const int64_t row = first_row + (j - lo);
    uint8_t* dst = out + static_cast<size_t>(row - first_row) * width * item;
    // The struct's own offset applies to its children.
    const int64_t child = L.vector_array->offset + j;
    if (!valid_at(*L.vector_array, j) || !valid_at(*f.type, child)) null_error(t.name, row, "vector");
    int64_t start, length;
    list_entry(values_level, child, start, length);
    if (first_null(*values_leaf, start, start + length) >= 0) null_error(t.name, row, "vector value");
    if (vector_type(f, child) == 1) {
      if (length != width) length_error(t, 0, width, length, row);
      copy_values(f.values_format, values_leaf->buffers[1], values_leaf->offset + start, length, t.dtype, dst);
      continue;
    }
    const int64_t size = valid_at(*f.size, child) ? vector_size(f, child) : -1;
    if (size != width) length_error(t, 0, width, size, row);
    int64_t istart, ilength;
    list_entry(indices_level, child, istart, ilength);
    if (ilength != length) throw ColumnError("column '" + t.name + "': sparse vector at row " +
                                             std::to_string(row) + " has unequal indices and values", row);
    dense.assign(static_cast<size_t>(width), 0.0);
    std::vector<double> vals(static_cast<size_t>(length));
    copy_values(f.values_format, values_leaf->buffers[1], values_leaf->offset + start, length, DType::Float64,
                reinterpret_cast<uint8_t*>(vals.data()));
    const ArrowArray* idx_leaf = f.indices->children[0];
    const int32_t* idx = static_cast<const int32_t*>(idx_leaf->buffers[1]) + idx_leaf->offset + istart;
    for (int64_t k = 0; k < length; ++k) {
      if (idx[k] < 0 || idx[k] >= width)
        throw ColumnError("column '" + t.name + "': sparse vector index " + std::to_string(idx[k]) +
                          " out of range for size " + std::to_string(width) + " at row " + std::to_string(row), row);
      dense[idx[k]] = vals[k];
    }
    copy_values('g', dense.data(), 0, width, t.dtype, dst);
  }
}

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
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ColumnTarget::shape_text() const { return shape_of(shape); }

std::string describe_arrow_type(const ArrowSchema& s) {
  const std::string f = s.format;
  static const std::pair<const char*, const char*> names[] = {
      {"n", "null"},     {"b", "bool"},     {"c", "int8"},     {"C", "uint8"},   {"s", "int16"},
      {"S", "uint16"},   {"i", "int32"},    {"I", "uint32"},   {"l", "int64"},   {"L", "uint64"},
      {"e", "float16"},  {"f", "float"},    {"g", "double"},   {"u", "string"},  {"U", "large_string"},
      {"vu", "string"},  {"z", "binary"},   {"Z", "large_binary"}, {"vz", "binary"}, {"tdD", "date32"},
      {"tdm", "date64"}, {"+m", "map"}};
  for (const auto& [format, name] : names)
    if (f == format) return name;
  if (f.rfind("d:", 0) == 0) return "decimal128(" + f.substr(2) + ")";
  if (f.rfind("ts", 0) == 0) return "timestamp";
  if (f == "+l" || f == "+L" || f.rfind("+w:", 0) == 0)
    return std::string(f == "+L" ? "large_list<" : "list<") + describe_arrow_type(*s.children[0]) + ">";
  if (f == "+s") {
    std::string out = "struct<";
    for (int64_t i = 0; i < s.n_children; ++i)
      out += std::string(i ? ", " : "") + (s.children[i]->name ? s.children[i]->name : "") + ": " +
             describe_arrow_type(*s.children[i]);
    return out + ">";
  }
  return "'" + f + "'";
}

void resolve_shape(const ArrowSchema& schema, const ArrowArray& array, int64_t parent_offset, int64_t begin,
                   ColumnTarget& target) {
  const Layout L = parse_layout(schema, array, target.name);
  check_depth(L, target, schema);
  for (size_t d = L.depth(); d < target.shape.size(); ++d) target.shape[d] = 1;
  if (target.resolved() || begin >= array.length) return;
  int64_t j = parent_offset + begin;
  for (size_t d = 0; d < L.levels.size(); ++d) {
    if (!valid_at(*L.levels[d].array, j)) null_error(target.name, begin, d == 0 ? "value" : "nested array");
    int64_t start, length;
    list_entry(L.levels[d], j, start, length);
    if (target.shape[d] < 0) target.shape[d] = length;
    if (length == 0 && !target.resolved()) {
      throw ColumnError("column '" + target.name + "' has an empty array at row " + std::to_string(begin) +
                        ", so its per-row shape cannot be inferred", begin);
    }
    j = start;
  }
  if (L.vector && target.shape[0] < 0) {
    if (!valid_at(*L.vector_array, j)) null_error(target.name, begin, "vector");
    const int64_t child = L.vector_array->offset + j;
    if (vector_type(L.fields, child) == 1) {
      int64_t start, length;
      list_entry({L.fields.values, 'l', 0}, child, start, length);
      target.shape[0] = length;
    } else {
      target.shape[0] = vector_size(L.fields, child);
    }
  }
}

void convert_rows(const ArrowSchema& schema, const ArrowArray& array, int64_t parent_offset, int64_t begin,
                  int64_t end, const ColumnTarget& target, uint8_t* out) {
  if (end <= begin) return;
  const Layout L = parse_layout(schema, array, target.name);
  check_depth(L, target, schema);
  int64_t lo = parent_offset + begin, hi = parent_offset + end;
  int64_t per_row = 1;  // entries at the current level that make one row
  for (size_t d = 0; d < L.levels.size(); ++d) {
    const ListLevel& level = L.levels[d];
    const int64_t j = first_null(*level.array, lo, hi);
    if (j >= 0) null_error(target.name, begin + (j - lo) / per_row, d == 0 ? "value" : "nested array element");
    const int64_t dim = target.shape[d];
    int64_t start = 0, length = 0;
    if (level.kind == 'w') {
      if (level.fixed != dim) length_error(target, static_cast<int>(d), dim, level.fixed, begin);
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        list_entry(level, i, start, length);
        if (length != dim) length_error(target, static_cast<int>(d), dim, length, begin + (i - lo) / per_row);
      }
    }
    int64_t child_lo, child_hi, unused;
    list_entry(level, lo, child_lo, unused);
    child_hi = child_lo + (hi - lo) * dim;  // contiguous: every entry has length dim
    lo = child_lo;
    hi = child_hi;
    per_row *= dim;
  }
  if (L.vector) return convert_vectors(L, lo, hi, begin, target, out);
  const int64_t j = first_null(*L.leaf, lo, hi);
  if (j >= 0) null_error(target.name, begin + (j - lo) / per_row, L.levels.empty() ? "value" : "array element");
  copy_values(L.leaf_format, L.leaf->buffers[1], L.leaf->offset + lo, hi - lo, target.dtype, out);
}

}  // namespace keras_spark
