#include "arrow_reader.h"

#include <cstring>
#include <limits>

namespace keras_spark {
namespace {

bool is_number_format(const char* f) {
  return f[0] != '\0' && f[1] == '\0' && std::strchr("bcCsSiIlLfg", f[0]) != nullptr;
}

bool is_integer_format(char f) { return f != '\0' && std::strchr("cCsSiIlL", f) != nullptr; }

const char* name_of(const ArrowSchema& s) { return s.name ? s.name : ""; }

}  // namespace

ArrowView::ArrowView(const ArrowSchema& schema, const ArrowArray& array, int64_t first, int64_t length,
                     const std::string& column)
    : schema_(&schema), array_(&array), first_(array.offset + first), length_(length), column_(column) {
  parse(column);
}

void ArrowView::malformed(const std::string& what) const {
  throw ColumnError("column '" + column_ + "' is a malformed Arrow array (" + describe_arrow_type(*schema_) +
                    "): " + what);
}

void ArrowView::need_buffers(int64_t n) const {
  if (array_->n_buffers != n) malformed("expected " + std::to_string(n) + " buffers, found " +
                                        std::to_string(array_->n_buffers));
  if (n > 0 && !array_->buffers) malformed("no buffers");
  for (int64_t i = 1; i < n; ++i)
    if (!array_->buffers[i] && length_ > 0) malformed("buffer " + std::to_string(i) + " is missing");
}

void ArrowView::parse(const std::string& column) {
  if (!schema_->format) malformed("no format");
  const int64_t begin = first_ - array_->offset;  // entries [begin, begin + length_) of the array
  if (array_->offset < 0 || array_->length < 0 || begin < 0 || length_ < 0 || begin + length_ > array_->length)
    malformed("entries " + std::to_string(begin) + ".." + std::to_string(begin + length_) +
              " are outside its length " + std::to_string(array_->length));
  const std::string f = schema_->format;
  const bool dictionary = schema_->dictionary != nullptr || array_->dictionary != nullptr;
  const bool nested = f == "+l" || f == "+L" || f.rfind("+w:", 0) == 0;
  const bool known = is_number_format(schema_->format) || nested || f == "+s";
  if (!known && !dictionary) return;  // Unsupported: only described
  need_buffers(f == "+s" || f.rfind("+w:", 0) == 0 ? 1 : 2);
  if (array_->null_count != 0 && array_->buffers[0]) validity_ = static_cast<const uint8_t*>(array_->buffers[0]);
  values_ = array_->n_buffers > 1 ? array_->buffers[1] : nullptr;
  if (dictionary) {
    if (!schema_->dictionary || !array_->dictionary) malformed("a dictionary on only one of schema and array");
    if (!is_integer_format(f.size() == 1 ? f[0] : '\0')) malformed("dictionary indices must be integers");
    kind_ = ArrowKind::Dictionary;
    number_format_ = f[0];
    children_.emplace_back(*schema_->dictionary, *array_->dictionary, 0, array_->dictionary->length, column);
    return;
  }
  if (is_number_format(schema_->format)) {
    if (array_->n_children != 0) malformed("a number array with children");
    kind_ = ArrowKind::Number;
    number_format_ = f[0];
    return;
  }
  if (f == "+s") return parse_vector(column);
  if (schema_->n_children != 1 || array_->n_children != 1 || !schema_->children || !array_->children ||
      !schema_->children[0] || !array_->children[0])
    malformed("a list needs exactly one child");
  const ArrowArray& values = *array_->children[0];
  children_.emplace_back(*schema_->children[0], values, 0, values.length, column);
  if (f[1] == 'w') {
    kind_ = ArrowKind::FixedList;
    try {
      fixed_size_ = std::stoll(f.substr(3));
    } catch (const std::exception&) {
      malformed("bad fixed size");
    }
    if (fixed_size_ < 0) malformed("negative fixed size");
    int64_t needed = 0;
    if (__builtin_mul_overflow(first_ + length_, fixed_size_, &needed) || needed > values.length)
      malformed("fixed-size list values shorter than its entries");
    return;
  }
  kind_ = f[1] == 'l' ? ArrowKind::List : ArrowKind::LargeList;
}

void ArrowView::parse_vector(const std::string& column) {
  // Only Spark ML's vector struct is a column kind; any other struct is unsupported.
  const ArrowSchema& s = *schema_;
  if (s.n_children != 4 || array_->n_children != 4 || !s.children || !array_->children) return;
  const char* names[] = {"type", "size", "indices", "values"};
  int order[4] = {-1, -1, -1, -1};
  for (int64_t i = 0; i < 4; ++i) {
    if (!s.children[i] || !array_->children[i]) malformed("a missing struct child");
    for (int k = 0; k < 4; ++k)
      if (std::strcmp(name_of(*s.children[i]), names[k]) == 0) order[k] = static_cast<int>(i);
  }
  for (int k = 0; k < 4; ++k)
    if (order[k] < 0) return;
  auto format = [&](int k) { return std::string(s.children[order[k]]->format); };
  auto list_of = [&](int k, const char* inner) {
    const ArrowSchema& c = *s.children[order[k]];
    return format(k) == "+l" && c.n_children == 1 && c.children && c.children[0] &&
           (inner ? std::strcmp(c.children[0]->format, inner) == 0 : is_number_format(c.children[0]->format));
  };
  if (format(0) != "c" || format(1) != "i" || !list_of(2, "i") || !list_of(3, nullptr)) return;
  // Struct children start at the struct's own physical position (first_).
  for (int k = 0; k < 4; ++k)
    children_.emplace_back(*s.children[order[k]], *array_->children[order[k]], first_, length_, column);
  for (const ArrowView& c : children_)
    if (c.kind() == ArrowKind::Unsupported || c.kind() == ArrowKind::Dictionary) malformed("vector field kinds");
  kind_ = ArrowKind::Vector;
}

int ArrowView::depth() const {
  switch (kind_) {
    case ArrowKind::List:
    case ArrowKind::LargeList:
    case ArrowKind::FixedList: return 1 + children_[0].depth();
    case ArrowKind::Vector: return 1;
    case ArrowKind::Dictionary: return children_[0].depth();
    default: return 0;
  }
}

int64_t ArrowView::first_null(int64_t begin, int64_t end) const {
  if (!validity_) return -1;
  for (int64_t i = begin; i < end; ++i)
    if (!valid(i)) return i;
  return -1;
}

ListRange ArrowView::list_range(int64_t i) const { return list_ranges(i, i + 1); }

ListRange ArrowView::list_ranges(int64_t begin, int64_t end) const {
  if (begin >= end) return {0, 0};
  if (begin < 0 || end > length_) malformed("list entry outside the array");
  const int64_t child_length = children_[0].length();
  ListRange r{};
  if (kind_ == ArrowKind::FixedList) {
    r = {(first_ + begin) * fixed_size_, (first_ + end) * fixed_size_};
  } else if (kind_ == ArrowKind::List) {
    const int32_t* off = static_cast<const int32_t*>(values_);
    r = {off[first_ + begin], off[first_ + end]};
  } else if (kind_ == ArrowKind::LargeList) {
    const int64_t* off = static_cast<const int64_t*>(values_);
    r = {off[first_ + begin], off[first_ + end]};
  } else {
    malformed("internal: list_range of a non-list");
  }
  if (r.begin < 0 || r.end < r.begin || r.end > child_length) malformed("list offsets outside the values");
  return r;
}

template <typename Offset>
static int64_t first_other_length(const Offset* off, int64_t length, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i)
    if (off[i + 1] - off[i] != length) return i;
  return -1;
}

int64_t ArrowView::first_length_other_than(int64_t length, int64_t begin, int64_t end) const {
  if (begin >= end) return -1;
  if (begin < 0 || end > length_) malformed("list entry outside the array");
  int64_t found = -1;
  if (kind_ == ArrowKind::FixedList) found = fixed_size_ != length ? begin : -1;
  else if (kind_ == ArrowKind::List)
    found = first_other_length(static_cast<const int32_t*>(values_), length, first_ + begin, first_ + end);
  else if (kind_ == ArrowKind::LargeList)
    found = first_other_length(static_cast<const int64_t*>(values_), length, first_ + begin, first_ + end);
  else
    malformed("internal: list lengths of a non-list");
  return found < 0 ? -1 : found - (kind_ == ArrowKind::FixedList ? 0 : first_);
}

int64_t ArrowView::integer(int64_t i) const {
  const int64_t p = first_ + i;
  switch (number_format_) {
    case 'c': return static_cast<const int8_t*>(values_)[p];
    case 'C': return static_cast<const uint8_t*>(values_)[p];
    case 's': return static_cast<const int16_t*>(values_)[p];
    case 'S': return static_cast<const uint16_t*>(values_)[p];
    case 'i': return static_cast<const int32_t*>(values_)[p];
    case 'I': return static_cast<const uint32_t*>(values_)[p];
    case 'l': return static_cast<const int64_t*>(values_)[p];
    case 'L': {
      const uint64_t v = static_cast<const uint64_t*>(values_)[p];
      return v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? -1 : static_cast<int64_t>(v);
    }
  }
  throw ColumnError("column '" + column_ + "': internal: integer() of Arrow type " + describe_arrow_type(*schema_));
}

std::string describe_arrow_type(const ArrowSchema& s) {
  if (!s.format) return "'?'";
  const std::string f = s.format;
  if (s.dictionary) return "dictionary<values=" + describe_arrow_type(*s.dictionary) + ">";
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
  const bool has_child = s.n_children >= 1 && s.children && s.children[0];
  if ((f == "+l" || f == "+L" || f.rfind("+w:", 0) == 0) && has_child)
    return std::string(f == "+L" ? "large_list<" : "list<") + describe_arrow_type(*s.children[0]) + ">";
  if (f == "+s") {
    std::string out = "struct<";
    for (int64_t i = 0; s.children && i < s.n_children; ++i)
      if (s.children[i])
        out += std::string(i ? ", " : "") + name_of(*s.children[i]) + ": " + describe_arrow_type(*s.children[i]);
    return out + ">";
  }
  return "'" + f + "'";
}

}  // namespace keras_spark
