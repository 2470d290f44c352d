// CacheWriter: Arrow record batches -> dense column files, one per column, plus the
// runs of rows that share a partition id. One writer per Spark task; the driver
// reads the files back memory-mapped (see pipeline.h).
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "columns.h"
#include "ragged_column.h"
#include "sparse_column.h"

namespace keras_spark {

struct CacheColumn {
  ColumnTarget target;
  int field_index;  // position of the column in the record batch
  bool sparse = false;  // a vector kept as its non-zeros (sparse_column.h)
  bool ragged = false;  // values + offsets files (ragged_column.h), not a dense file
  RaggedSpec ragged_spec;
};

struct PartitionRun {
  int64_t partition_id;
  int64_t start;  // first row in the files
  int64_t count;
};

struct CacheSummary {
  int64_t rows = 0;
  std::vector<PartitionRun> runs;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::string> files;
};

class CacheWriter {
 public:
  CacheWriter(std::string path_prefix, std::vector<CacheColumn> columns, int partition_field);
  ~CacheWriter();
  CacheWriter(const CacheWriter&) = delete;
  CacheWriter& operator=(const CacheWriter&) = delete;

  // `batch` is a record batch as a struct array ("+s"). Throws ColumnError.
  void write(const ArrowSchema& schema, const ArrowArray& batch);
  CacheSummary finish();

 private:
  void check_batch(const ArrowSchema& schema, const ArrowArray& batch) const;
  void read_partition_ids(const ArrowSchema& schema, const ArrowArray& batch, std::vector<int64_t>& ids) const;
  void note_runs(const std::vector<int64_t>& ids);
  void close_files();

  std::vector<CacheColumn> columns_;
  int partition_field_;
  std::vector<std::string> paths_;
  std::vector<std::FILE*> files_;
  std::vector<std::unique_ptr<SparseColumnWriter>> sparse_writers_;  // per column; null for dense
  std::vector<uint8_t> buffer_;
  std::vector<std::unique_ptr<RaggedOffsetsWriter>> offsets_;  // per column; null for dense ones
  RaggedRows ragged_rows_;
  CacheSummary summary_;
  bool finished_ = false;
};

}  // namespace keras_spark
