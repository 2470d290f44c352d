// Ragged columns: rows of different lengths, cached as values + offsets and padded per batch.
//
// Two kinds share the layout:
// - sequences: an Arrow list whose entries are steps of a fixed per-step shape (a Keras
//   input of shape (None, ...)); the values file holds every row's steps back to back;
// - strings: Arrow string/binary; the values file holds every row's bytes back to back.
// Beside the values file, `<values file>.offsets` holds rows + 1 int64 offsets (in steps or
// bytes) where row r spans [offsets[r], offsets[r + 1]).
//
// A batch is padded to its longest row, or to a fixed length (cut as `pad_sequences` would
// cut it), in the manner of keras.utils.pad_sequences.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "columns.h"

namespace keras_spark {

// How a ragged column is read from Arrow.
struct RaggedSpec {
  bool strings = false;
  int64_t max_length = -1;  // a row longer than this is an error (a fixed length with truncation unset)
};

// Converted rows: their values back to back and, per row, where it ends (from 0).
struct RaggedRows {
  std::vector<uint8_t> values;
  std::vector<int64_t> ends;
};

// Rows [0, n) of `array` (rows [first, first + n) of its parent batch) converted: sequences to
// `target.dtype` steps of per-step shape target.shape[1:] (resolved from the first step seen),
// strings to their bytes. Throws ColumnError naming the column and the row.
void convert_ragged(const ArrowSchema& schema, const ArrowArray& array, int64_t first, int64_t n,
                    ColumnTarget& target, const RaggedSpec& spec, RaggedRows& out);

// The offsets file of one ragged column of a cache chunk, written beside its values file.
class RaggedOffsetsWriter {
 public:
  explicit RaggedOffsetsWriter(std::string path);
  ~RaggedOffsetsWriter();
  RaggedOffsetsWriter(const RaggedOffsetsWriter&) = delete;
  RaggedOffsetsWriter& operator=(const RaggedOffsetsWriter&) = delete;
  void append(const std::vector<int64_t>& ends);  // ends relative to the rows' first value
  void finish();

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  int64_t total_ = 0;
  std::vector<int64_t> buffer_;
};

std::string offsets_path(const std::string& values_path);

// How a ragged column becomes a dense batch.
struct PadSpec {
  bool strings = false;
  int64_t length = -1;  // fixed padded length; -1: the batch's longest row (at least 1)
  bool pad_pre = false;       // padding='pre': values at the end of the row
  bool truncate_pre = false;  // truncating='pre': keep a long row's last `length` steps
  size_t step_bytes = 1;      // bytes of one step (strings: one byte)
  std::vector<uint8_t> pad_step;  // one step of padding (step_bytes bytes)
};

// One cache chunk's ragged column as the pipeline sees it (memory-mapped).
struct RaggedChunk {
  const uint8_t* values = nullptr;
  size_t values_bytes = 0;
  const int64_t* offsets = nullptr;  // rows + 1 entries
  int64_t rows = 0;
  int64_t length(int64_t row) const { return offsets[row + 1] - offsets[row]; }
};

// Checks a chunk's offsets: non-decreasing, starting at 0, inside the values. Throws std::runtime_error.
void check_ragged_chunk(const RaggedChunk& chunk, size_t step_bytes, const std::string& what);

struct PaddedBatch {
  uint8_t* data = nullptr;  // malloc'd; rows * length * step_bytes bytes
  int64_t length = 0;       // padded steps a row
  int64_t real_steps = 0;   // steps that hold values (not padding)
};

// Rows (chunk << row_bits | row) gathered from `chunks` into one padded buffer.
PaddedBatch gather_padded(const PadSpec& spec, const std::vector<RaggedChunk>& chunks, const uint64_t* rows,
                          size_t n, int row_bits);

// `value` as one element of `dtype`, repeated to fill one step of `step_elements`.
std::vector<uint8_t> pad_step_of(double value, DType dtype, int64_t step_elements);

}  // namespace keras_spark
