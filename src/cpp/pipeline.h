// Pipeline: endless batches from the memory-mapped cache, epoch after epoch.
//
// A planner (sequential, cheap) decides which rows form each batch: partitions are
// opened `cycle_length` at a time and interleaved, in order or, when shuffling, in a
// seeded per-epoch order with rows drawn at random across the open partitions. Worker
// threads gather the planned rows into fresh buffers in parallel; the consumer takes
// batches strictly in order, at most `prefetch` ahead.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "columns.h"
#include "ragged_column.h"
#include "sparse_column.h"

namespace keras_spark {

struct Segment {
  int64_t chunk;
  int64_t start;
  int64_t count;
};

struct ColumnLayout {
  DType dtype;
  std::vector<int64_t> shape;  // resolved per-row shape
  std::shared_ptr<const PadSpec> pad;  // a ragged column (values + offsets files), padded per batch
  bool sparse = false;         // its file holds each row's end offset; entries beside it (sparse_column.h)
  size_t row_bytes() const;
};

struct PipelineOptions {
  int64_t batch_size = 32;
  bool shuffle = true;
  uint64_t seed = 0;
  int cycle_length = 1;
  int num_threads = 1;
  int prefetch = 4;
  int64_t first_epoch = 0;
  int bucket_column = -1;  // a ragged column whose row lengths group rows into buckets
  std::vector<int64_t> bucket_boundaries;
  // Bucketing: the epoch's part-filled buckets are served as one row stream cut into full batches
  // (one part-filled batch an epoch, not one a bucket), so a compiled step sees fewer batch shapes.
  bool merge_bucket_tails = false;
  SparseLayout sparse_layout;  // how sparse columns' batches are laid out for the backend
};

// A batch: one buffer per column (the caller takes ownership of each), `rows` rows each;
// a sparse column's buffer is null and its arrays are in `sparse` at the same position.
struct Batch {
  std::vector<uint8_t*> buffers;
  std::vector<SparseBatchPart> sparse;
  int64_t rows = 0;
  std::vector<int64_t> lengths;  // per column: a ragged column's padded length, else -1
  int64_t real_steps = 0, padded_steps = 0;  // ragged columns' steps holding values / in all
  Batch() = default;
  Batch(Batch&& other) noexcept;
  Batch& operator=(Batch&& other) noexcept;
  ~Batch();
};

struct PipelineStats {
  int64_t rows = 0, bytes = 0, batches = 0;
  double consumer_wait_s = 0, gather_s = 0;
  int threads = 0;
  int64_t real_steps = 0, padded_steps = 0;
};

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Drops this process's mapping of [offset, offset + bytes) (the page cache keeps the
  // data; a later read faults it back in), so resident memory tracks the open partitions.
  void release(size_t offset, size_t bytes) const;

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Which rows go in each batch; deterministic for a given seed.
class BatchPlanner {
 public:
  BatchPlanner(std::vector<std::vector<Segment>> partitions, const PipelineOptions& options);
  // Row references (chunk << 40 | row) of the next batch; a batch never spans two epochs.
  void next(std::vector<uint64_t>& rows);
  int64_t total_rows() const { return total_rows_; }
  // Rows of similar length batched together (bucket i: lengths below boundaries[i]; the last bucket the
  // rest), as tf.data's bucket_by_sequence_length: a bucket's batch is cut when it fills, and the
  // part-filled ones at the end of the epoch, so every row is still served once an epoch.
  void bucket_by(std::function<int64_t(uint64_t)> length, std::vector<int64_t> boundaries);
  int64_t steps_per_epoch() const;
  // Partitions whose rows have all been planned since the last call (their pages can go).
  std::vector<size_t> take_finished();
  const std::vector<Segment>& segments(size_t partition) const { return partitions_.at(partition); }
  size_t partition_count() const { return partitions_.size(); }

 private:
  struct Slot {
    size_t partition = 0;
    std::vector<uint64_t> rows;
    size_t position = 0;
    size_t remaining() const { return rows.size() - position; }
  };
  void start_epoch();
  bool open_next(Slot& slot);
  uint64_t take_one();  // the next row: drawn across the open partitions, or round-robin without shuffle
  size_t bucket_of(uint64_t row) const;
  uint64_t draw(uint64_t bound);

  std::vector<std::vector<Segment>> partitions_;
  PipelineOptions options_;
  int64_t total_rows_ = 0;
  int64_t epoch_;
  int64_t served_in_epoch_ = 0;
  std::vector<size_t> order_;
  size_t next_partition_ = 0;
  std::vector<Slot> slots_;
  size_t cursor_ = 0;
  uint64_t rng_state_ = 0;
  std::vector<size_t> finished_;
  uint64_t open_rows_ = 0;  // rows not yet planned in the open slots
  std::function<int64_t(uint64_t)> length_;  // bucketing: a row's length
  std::vector<int64_t> boundaries_;
  std::vector<std::vector<uint64_t>> staged_;  // bucketing: rows drawn, waiting for their bucket to fill
  int64_t bucketed_steps_ = 0;
};

class Pipeline {
 public:
  Pipeline(const std::vector<std::vector<std::string>>& chunk_files, std::vector<ColumnLayout> columns,
           std::vector<std::vector<Segment>> partitions, const PipelineOptions& options);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  Batch next();  // blocks until the next batch in order is ready; rethrows worker errors
  void close();

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t rows() const { return planner_.total_rows(); }
  int64_t epoch() const;
  int64_t step() const;
  const std::vector<ColumnLayout>& columns() const { return columns_; }
  const SparseLayout& sparse_layout() const { return options_.sparse_layout; }
  PipelineStats stats() const;

 private:
  void check_segments(size_t partitions) const;
  void work();
  Batch gather(const std::vector<uint64_t>& rows);
  void release(const std::vector<size_t>& partitions) const;

  std::vector<ColumnLayout> columns_;
  std::vector<std::vector<std::unique_ptr<MappedFile>>> files_;  // [chunk][column]
  std::vector<std::vector<std::unique_ptr<MappedFile>>> offsets_files_;  // [chunk][column]; ragged columns only
  std::vector<std::vector<RaggedChunk>> ragged_;  // [column][chunk]; ragged columns only
  void map_ragged(const std::vector<std::vector<std::string>>& chunk_files);
  std::vector<std::unique_ptr<SparseColumnFiles>> sparse_files_;  // entries of every sparse column of every chunk
  std::vector<std::vector<SparseSource>> sparse_sources_;          // [column][chunk]; empty for dense columns
  BatchPlanner planner_;
  PipelineOptions options_;
  int64_t steps_per_epoch_;

  std::mutex plan_mutex_;  // guards planner_
  mutable std::mutex mutex_;
  std::condition_variable ready_cv_, space_cv_;
  std::map<int64_t, Batch> ready_;
  std::deque<std::pair<int64_t, std::vector<size_t>>> to_release_;  // (batch id, finished partitions)
  int64_t planned_ = 0, consumed_ = 0;
  bool closed_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;
  PipelineStats stats_;
};

}  // namespace keras_spark
