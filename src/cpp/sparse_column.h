// Sparse columns: Spark ML vectors (sparse or dense) kept as their non-zeros, for a Keras
// input declared sparse=True.
//
// Cache layout, three files a column a chunk (memory follows the non-zeros, not the width):
//   <file>          int64 a row: the end of the row's entries (its start is the previous row's end)
//   <file>.indices  int32 an entry: the column index (Spark's vector size is an int32)
//   <file>.values   the input's dtype an entry
// A batch leaves as COO: indices [nnz, 2] (row within the batch, column), values [nnz],
// rows sorted and columns sorted within a row, which tf.SparseTensor and BCOO both take; or,
// for data-parallel JAX, batched by row (BCOO with n_batch=1): indices [rows, k, 1] and
// values [rows, k], k entries a row, whose batch dimension shards like a dense batch's.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "columns.h"

namespace keras_spark {

class MappedFile;

// Rows of a column as CSR: ends[i] is one past row i's last entry, counting from 0.
struct SparseRows {
  std::vector<int64_t> ends;
  std::vector<int32_t> indices;
  std::vector<uint8_t> values;  // target.dtype
  int64_t nnz() const { return ends.empty() ? 0 : ends.back(); }
};

// Rows [begin, end) of a vector `column` as CSR in `out`. The width is target.shape[0]
// (resolved from the first row when -1). Throws ColumnError naming the column and row for
// a null, a size other than the width, an index outside it, indices not strictly
// increasing, or a value the dtype cannot hold (NaN/infinity unless allow_non_finite).
void convert_sparse_rows(const ArrowView& column, int64_t begin, int64_t end, ColumnTarget& target,
                         SparseRows& out);

// How a batch's COO arrays are laid out for the backend.
struct SparseLayout {
  int index_bytes = 8;        // 8: int64 indices (tf.SparseTensor); 4: int32 (BCOO)
  bool pad_to_bucket = false;  // JAX compiles one step per shape: pad nnz to one of a few sizes
  int64_t row_entries = 0;     // > 0: batched by row, this many entries a row (no row may have more)
  bool batched() const { return row_entries > 0; }
};

// One sparse column of one batch: indices [capacity, 2], values [capacity]; entries past
// nnz (padding) are index (0, 0), value 0, which add nothing to any sum or product (so a
// batch with no rows or no columns, where (0, 0) is outside it, is never padded). Batched by
// row: capacity is rows * row_entries, a row's unused entries are column 0, value 0.
struct SparseBatchPart {
  uint8_t* indices = nullptr;
  uint8_t* values = nullptr;
  int64_t nnz = 0;
  int64_t capacity = 0;
  SparseBatchPart() = default;
  SparseBatchPart(SparseBatchPart&& other) noexcept;
  SparseBatchPart& operator=(SparseBatchPart&& other) noexcept;
  ~SparseBatchPart();
  void reset();
};

// Bytes of a batch part's arrays (padding included).
int64_t sparse_bytes(const SparseBatchPart& part, DType dtype, const SparseLayout& layout);

// nnz rounded up to a size of its own octave's eighth (at most 12.5% padding, a few distinct sizes).
int64_t padded_nnz(int64_t nnz);

// CSR rows of `width` columns -> a batch's COO arrays.
SparseBatchPart coo_of(const SparseRows& rows, int64_t width, DType dtype, const SparseLayout& layout);

// Appends converted rows to the .indices and .values files; the end offsets (continuing the
// earlier batches') go to the caller's offsets file as int64 a row.
class SparseColumnWriter {
 public:
  explicit SparseColumnWriter(const std::string& offsets_path);
  ~SparseColumnWriter();
  SparseColumnWriter(const SparseColumnWriter&) = delete;
  SparseColumnWriter& operator=(const SparseColumnWriter&) = delete;

  // Converts rows [0, rows) of `column`, writes their entries, and leaves their end offsets in `offsets`.
  void write(const ArrowView& column, int64_t rows, ColumnTarget& target, std::vector<uint8_t>& offsets);
  void finish();

 private:
  std::string indices_path_, values_path_;
  std::FILE* indices_ = nullptr;
  std::FILE* values_ = nullptr;
  int64_t written_ = 0;  // entries so far
  SparseRows rows_;
};

// The .indices and .values files of one sparse column of one chunk, memory-mapped.
class SparseColumnFiles {
 public:
  explicit SparseColumnFiles(const std::string& offsets_path);
  ~SparseColumnFiles();
  const MappedFile& indices() const { return *indices_; }
  const MappedFile& values() const { return *values_; }

 private:
  std::unique_ptr<MappedFile> indices_, values_;
};

// One stretch of a batch's rows that lies in one chunk.
struct SparseSource {
  const MappedFile* offsets;
  const SparseColumnFiles* entries;
};

// Gathers `rows` (chunk << row_bits | row) of a sparse column of `width` into a batch's COO arrays.
SparseBatchPart gather_sparse(const std::vector<uint64_t>& rows, int row_bits, const std::vector<SparseSource>& chunks,
                              int64_t width, DType dtype, const SparseLayout& layout);

// Drops the pages of rows [start, start + count) of a chunk's entries (see MappedFile::release).
void release_sparse(const SparseSource& source, int64_t start, int64_t count, DType dtype);

}  // namespace keras_spark
