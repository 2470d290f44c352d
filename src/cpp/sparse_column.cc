#include "sparse_column.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

#include "casts.h"
#include "pipeline.h"

namespace keras_spark {
namespace {

uint8_t* allocate(size_t bytes) {
  void* p = nullptr;  // 64-byte aligned, as the dense batches
  if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) throw std::bad_alloc();
  return static_cast<uint8_t*>(p);
}

std::string at(int64_t row) { return " at row " + std::to_string(row); }

[[noreturn]] void null_error(const std::string& column, int64_t row, const char* where) {
  throw ColumnError("column '" + column + "' has a null " + where + at(row) +
                        "; keras-spark does not guess values for nulls: drop or fill them in Spark first "
                        "(df.dropna / df.fillna)",
                    row);
}

[[noreturn]] void size_error(const ColumnTarget& t, int64_t found, int64_t row) {
  throw ColumnError("column '" + t.name + "': expected a vector of size " + std::to_string(t.shape[0]) +
                        " (the sparse Keras input's shape " + t.shape_text() + "), found size " +
                        std::to_string(found) + at(row) + "; give the input shape=(size,) of the column's vectors",
                    row);
}

// Casts n values to the target dtype at `out`; a value it cannot hold is an error naming the row.
void cast_or_throw(const ArrowView& items, int64_t first, int64_t n, const ColumnTarget& t, uint8_t* out,
                   int64_t row) {
  const CastResult r = cast_values(items.number_format(), items.values(), items.physical(first), n, t.dtype,
                                   t.allow_non_finite, out);
  if (r.index < 0) return;
  const std::string value = value_text(items.number_format(), items.values(), items.physical(first + r.index));
  if (r.problem == ValueProblem::NonFinite)
    throw ColumnError("column '" + t.name + "' has a NaN or infinite value (" + value + ")" + at(row) +
                          "; it would train to a NaN loss: fix or drop such rows in Spark, or pass "
                          "allow_non_finite=True to keep them",
                      row);
  throw ColumnError("column '" + t.name + "' has the value " + value + at(row) + ", which " + dtype_name(t.dtype) +
                        " cannot represent (" + dtype_range(t.dtype) + "): give the Keras input a wider dtype",
                    row);
}

class SparseConverter {
 public:
  SparseConverter(const ArrowView& column, const ColumnTarget& target, SparseRows& out)
      : v_(column), t_(target), out_(out), width_(target.shape[0]), value_bytes_(dtype_size(target.dtype)) {}

  void row(int64_t j) {
    const ArrowView &type = v_.child(0), &size = v_.child(1), &indices = v_.child(2), &values = v_.child(3);
    if (!v_.valid(j) || !type.valid(j) || !values.valid(j)) null_error(t_.name, j, "vector");
    const ListRange r = values.list_range(j);
    if (values.child().first_null(r.begin, r.end) >= 0) null_error(t_.name, j, "vector value");
    const int64_t kind = type.integer(j);
    if (kind == 1) return dense_row(j, r);
    if (kind != 0)
      throw ColumnError("column '" + t_.name + "': vector type " + std::to_string(kind) + at(j) +
                            "; expected 0 (sparse) or 1 (dense)", j);
    const int64_t found = size.valid(j) ? size.integer(j) : -1;
    if (found != width_) size_error(t_, found, j);
    if (!indices.valid(j)) null_error(t_.name, j, "vector");
    const ListRange ir = indices.list_range(j);
    const ArrowView& index_items = indices.child();
    if (ir.length() != r.length() || index_items.first_null(ir.begin, ir.end) >= 0)
      throw ColumnError("column '" + t_.name + "': sparse vector" + at(j) + " has unequal indices and values", j);
    int64_t previous = -1;
    for (int64_t k = ir.begin; k < ir.end; ++k) {
      const int64_t index = index_items.integer(k);
      if (index < 0 || index >= width_)
        throw ColumnError("column '" + t_.name + "': sparse vector index " + std::to_string(index) + at(j) +
                              " is outside the size " + std::to_string(width_) + " (indices 0.." +
                              std::to_string(width_ - 1) + "); fix the vectors in Spark", j);
      if (index <= previous)
        throw ColumnError("column '" + t_.name + "': sparse vector" + at(j) + " has index " + std::to_string(index) +
                              " after index " + std::to_string(previous) +
                              "; indices must be strictly increasing (no repeats), as Spark ML's Vectors.sparse "
                              "makes them", j);
      previous = index;
      out_.indices.push_back(static_cast<int32_t>(index));
    }
    const size_t old = out_.values.size();
    out_.values.resize(old + static_cast<size_t>(r.length()) * value_bytes_);
    cast_or_throw(values.child(), r.begin, r.length(), t_, out_.values.data() + old, j);
    end_row();
  }

 private:
  // A dense vector keeps only its non-zero values (a -0.0 counts as one: it is not all-zero bytes).
  void dense_row(int64_t j, const ListRange& r) {
    if (r.length() != width_) size_error(t_, r.length(), j);
    scratch_.resize(static_cast<size_t>(width_) * value_bytes_);
    cast_or_throw(v_.child(3).child(), r.begin, r.length(), t_, scratch_.data(), j);
    static const uint8_t zero[8] = {0};
    for (int64_t k = 0; k < width_; ++k) {
      const uint8_t* value = scratch_.data() + static_cast<size_t>(k) * value_bytes_;
      if (std::memcmp(value, zero, value_bytes_) == 0) continue;
      out_.indices.push_back(static_cast<int32_t>(k));
      out_.values.insert(out_.values.end(), value, value + value_bytes_);
    }
    end_row();
  }

  void end_row() { out_.ends.push_back(static_cast<int64_t>(out_.indices.size())); }

  const ArrowView& v_;
  const ColumnTarget& t_;
  SparseRows& out_;
  int64_t width_;
  size_t value_bytes_;
  std::vector<uint8_t> scratch_;
};

}  // namespace

void convert_sparse_rows(const ArrowView& column, int64_t begin, int64_t end, ColumnTarget& target,
                         SparseRows& out) {
  out.ends.clear();
  out.indices.clear();
  out.values.clear();
  if (column.kind() != ArrowKind::Vector)
    throw ColumnError("column '" + target.name + "' has Arrow type " + describe_arrow_type(column.schema()) +
                      "; a sparse Keras input (sparse=True) takes a Spark ML vector column");
  if (target.shape.size() != 1)
    throw ColumnError("column '" + target.name + "': a sparse input's per-row shape must be (size,), not " +
                      target.shape_text());
  if (target.shape[0] > std::numeric_limits<int32_t>::max())
    throw ColumnError("column '" + target.name + "': a sparse input's size " + std::to_string(target.shape[0]) +
                      " is past int32, the most a Spark ML vector holds");
  if (begin >= end) return;
  if (begin < 0 || end > column.length())
    throw ColumnError("column '" + target.name + "': internal: rows outside the array");
  if (target.shape[0] < 0) resolve_shape(column, begin, target);  // the first row's size
  out.ends.reserve(static_cast<size_t>(end - begin));
  SparseConverter converter(column, target, out);
  for (int64_t j = begin; j < end; ++j) converter.row(j);
}

// ---- batches ------------------------------------------------------------------------------------
SparseBatchPart::SparseBatchPart(SparseBatchPart&& other) noexcept
    : indices(other.indices), values(other.values), nnz(other.nnz), capacity(other.capacity) {
  other.indices = other.values = nullptr;
}

SparseBatchPart& SparseBatchPart::operator=(SparseBatchPart&& other) noexcept {
  if (this != &other) {
    reset();
    indices = other.indices;
    values = other.values;
    nnz = other.nnz;
    capacity = other.capacity;
    other.indices = other.values = nullptr;
  }
  return *this;
}

SparseBatchPart::~SparseBatchPart() { reset(); }

void SparseBatchPart::reset() {
  std::free(indices);
  std::free(values);
  indices = values = nullptr;
}

namespace {
int64_t indices_per_entry(const SparseLayout& layout) { return layout.batched() ? 1 : 2; }
}  // namespace

int64_t sparse_bytes(const SparseBatchPart& part, DType dtype, const SparseLayout& layout) {
  return part.capacity * (indices_per_entry(layout) * layout.index_bytes + static_cast<int64_t>(dtype_size(dtype)));
}

int64_t padded_nnz(int64_t nnz) {
  if (nnz <= 16) return 16;
  int64_t octave = 1;
  while (octave * 2 <= nnz) octave *= 2;
  const int64_t step = octave / 8;
  return (nnz + step - 1) / step * step;
}

namespace {

// A batch's arrays with room for `nnz` entries (padded per the layout where (0, 0) is inside the
// batch's shape); the padding is zeros.
SparseBatchPart allocate_part(int64_t nnz, int64_t rows, int64_t width, DType dtype, const SparseLayout& layout) {
  SparseBatchPart part;
  part.nnz = nnz;
  if (layout.batched())
    part.capacity = rows * layout.row_entries;
  else
    part.capacity = layout.pad_to_bucket && rows > 0 && width > 0 ? padded_nnz(nnz) : nnz;
  const size_t per_entry = static_cast<size_t>(indices_per_entry(layout) * layout.index_bytes);
  const size_t index_bytes = static_cast<size_t>(part.capacity) * per_entry;
  const size_t value_bytes = static_cast<size_t>(part.capacity) * dtype_size(dtype);
  part.indices = allocate(index_bytes);
  part.values = allocate(value_bytes);
  // Batched rows fill their entries in place, so all of it starts as padding; COO fills the front.
  const size_t used = layout.batched() ? 0 : static_cast<size_t>(nnz);
  std::memset(part.indices + used * per_entry, 0, index_bytes - used * per_entry);
  std::memset(part.values + used * dtype_size(dtype), 0, value_bytes - used * dtype_size(dtype));
  return part;
}

// Entries [begin, end) of one source row, written as batch row `row` at entry `at`: (row, column)
// pairs in COO, the column alone when batched by row.
template <typename Index>
void put_entries(Index* out, int64_t row, const int32_t* columns, int64_t begin, int64_t end, int64_t at,
                 bool batched) {
  for (int64_t k = begin; k < end; ++k, ++at) {
    if (batched) {
      out[at] = static_cast<Index>(columns[k]);
      continue;
    }
    out[2 * at] = static_cast<Index>(row);
    out[2 * at + 1] = static_cast<Index>(columns[k]);
  }
}

void put_row(SparseBatchPart& part, const SparseLayout& layout, int64_t row, const int32_t* columns,
             const uint8_t* values, size_t value_bytes, int64_t begin, int64_t end, int64_t at) {
  if (end <= begin) return;  // an empty row (its files or vectors may have no buffer at all)
  if (layout.batched()) {  // the row's own stretch of row_entries entries
    if (end - begin > layout.row_entries)
      throw std::runtime_error("internal: a sparse row has " + std::to_string(end - begin) +
                               " entries, more than the " + std::to_string(layout.row_entries) +
                               " a row the batch was laid out for");
    at = row * layout.row_entries;
  }
  if (layout.index_bytes == 8)
    put_entries(reinterpret_cast<int64_t*>(part.indices), row, columns, begin, end, at, layout.batched());
  else
    put_entries(reinterpret_cast<int32_t*>(part.indices), row, columns, begin, end, at, layout.batched());
  std::memcpy(part.values + static_cast<size_t>(at) * value_bytes, values + static_cast<size_t>(begin) * value_bytes,
              static_cast<size_t>(end - begin) * value_bytes);
}

}  // namespace

SparseBatchPart coo_of(const SparseRows& rows, int64_t width, DType dtype, const SparseLayout& layout) {
  SparseBatchPart part = allocate_part(rows.nnz(), static_cast<int64_t>(rows.ends.size()), width, dtype, layout);
  int64_t begin = 0;
  for (size_t i = 0; i < rows.ends.size(); ++i) {
    put_row(part, layout, static_cast<int64_t>(i), rows.indices.data(), rows.values.data(), dtype_size(dtype), begin,
            rows.ends[i], begin);
    begin = rows.ends[i];
  }
  return part;
}

// ---- the cache ----------------------------------------------------------------------------------
SparseColumnWriter::SparseColumnWriter(const std::string& offsets_path)
    : indices_path_(offsets_path + ".indices"), values_path_(offsets_path + ".values") {
  indices_ = std::fopen(indices_path_.c_str(), "wb");
  values_ = indices_ ? std::fopen(values_path_.c_str(), "wb") : nullptr;
  if (!indices_ || !values_) {
    if (indices_) std::fclose(indices_);
    throw std::runtime_error("cannot create cache file " + (indices_ ? values_path_ : indices_path_));
  }
  std::setvbuf(indices_, nullptr, _IOFBF, 1 << 20);
  std::setvbuf(values_, nullptr, _IOFBF, 1 << 20);
}

SparseColumnWriter::~SparseColumnWriter() {
  if (indices_) std::fclose(indices_);
  if (values_) std::fclose(values_);
}

void SparseColumnWriter::write(const ArrowView& column, int64_t rows, ColumnTarget& target,
                               std::vector<uint8_t>& offsets) {
  convert_sparse_rows(column, 0, rows, target, rows_);
  const size_t n = rows_.indices.size();
  if ((n && std::fwrite(rows_.indices.data(), sizeof(int32_t), n, indices_) != n) ||
      (!rows_.values.empty() && std::fwrite(rows_.values.data(), 1, rows_.values.size(), values_) != rows_.values.size()))
    throw std::runtime_error("cannot write cache file " + indices_path_ + " (disk full?)");
  offsets.resize(rows_.ends.size() * sizeof(int64_t));
  int64_t* ends = reinterpret_cast<int64_t*>(offsets.data());
  for (size_t i = 0; i < rows_.ends.size(); ++i) ends[i] = written_ + rows_.ends[i];
  written_ += static_cast<int64_t>(n);
}

void SparseColumnWriter::finish() {
  if (!indices_) return;
  const bool ok = std::fflush(indices_) == 0 && std::fflush(values_) == 0;
  std::fclose(indices_);
  std::fclose(values_);
  indices_ = values_ = nullptr;
  if (!ok) throw std::runtime_error("cannot write cache file " + indices_path_ + " (disk full?)");
}

SparseColumnFiles::SparseColumnFiles(const std::string& offsets_path)
    : indices_(std::make_unique<MappedFile>(offsets_path + ".indices")),
      values_(std::make_unique<MappedFile>(offsets_path + ".values")) {}

SparseColumnFiles::~SparseColumnFiles() = default;

namespace {

struct RowEntries {
  int64_t begin, end;
};

// Row `row`'s entries in a chunk, checked against the files (a truncated cache is an error, not a read past them).
RowEntries entries_of(const SparseSource& source, int64_t row, size_t value_bytes) {
  const MappedFile& offsets = *source.offsets;
  if (static_cast<size_t>(row + 1) * sizeof(int64_t) > offsets.size())
    throw std::runtime_error("cache file shorter than its rows");
  const int64_t* ends = reinterpret_cast<const int64_t*>(offsets.data());
  const RowEntries e{row == 0 ? 0 : ends[row - 1], ends[row]};
  if (e.begin < 0 || e.end < e.begin ||
      static_cast<size_t>(e.end) * sizeof(int32_t) > source.entries->indices().size() ||
      static_cast<size_t>(e.end) * value_bytes > source.entries->values().size())
    throw std::runtime_error("sparse cache files shorter than their offsets");
  return e;
}

}  // namespace

SparseBatchPart gather_sparse(const std::vector<uint64_t>& rows, int row_bits, const std::vector<SparseSource>& chunks,
                              int64_t width, DType dtype, const SparseLayout& layout) {
  const uint64_t mask = (uint64_t{1} << row_bits) - 1;
  const size_t value_bytes = dtype_size(dtype);
  std::vector<RowEntries> entries(rows.size());
  int64_t nnz = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const uint64_t chunk = rows[i] >> row_bits;
    if (chunk >= chunks.size()) throw std::runtime_error("a row of a chunk that does not exist");
    entries[i] = entries_of(chunks[chunk], static_cast<int64_t>(rows[i] & mask), value_bytes);
    nnz += entries[i].end - entries[i].begin;
  }
  SparseBatchPart part = allocate_part(nnz, static_cast<int64_t>(rows.size()), width, dtype, layout);
  int64_t at = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const SparseColumnFiles& files = *chunks[rows[i] >> row_bits].entries;
    put_row(part, layout, static_cast<int64_t>(i), reinterpret_cast<const int32_t*>(files.indices().data()),
            files.values().data(), value_bytes, entries[i].begin, entries[i].end, at);
    at += entries[i].end - entries[i].begin;
  }
  return part;
}

void release_sparse(const SparseSource& source, int64_t start, int64_t count, DType dtype) {
  if (count <= 0) return;
  const size_t value_bytes = dtype_size(dtype);
  const int64_t begin = entries_of(source, start, value_bytes).begin;
  const int64_t end = entries_of(source, start + count - 1, value_bytes).end;
  const size_t n = static_cast<size_t>(end - begin);
  source.entries->indices().release(static_cast<size_t>(begin) * sizeof(int32_t), n * sizeof(int32_t));
  source.entries->values().release(static_cast<size_t>(begin) * value_bytes, n * value_bytes);
}

}  // namespace keras_spark
