#include "ragged_column.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "arrow_reader.h"
#include "casts.h"

namespace keras_spark {
namespace {

[[noreturn]] void null_row(const std::string& column, int64_t row) {
  throw ColumnError("column '" + column + "' has a null value at row " + std::to_string(row) +
                        "; keras-spark does not guess values for nulls: drop or fill them in Spark first "
                        "(df.dropna / df.fillna)",
                    row);
}

void check_length(const ColumnTarget& t, const RaggedSpec& spec, int64_t length, int64_t row) {
  if (spec.max_length >= 0 && length > spec.max_length)
    throw ColumnError("column '" + t.name + "' has a sequence of length " + std::to_string(length) + " at row " +
                          std::to_string(row) + ", longer than the fixed sequence_length " +
                          std::to_string(spec.max_length) +
                          "; pass truncating='pre' or 'post' to cut long rows (as keras.utils.pad_sequences "
                          "does), or a larger sequence_length",
                      row);
}

template <typename Offset>
void copy_strings(const ArrowArray& array, int64_t first, int64_t n, const ColumnTarget& t, RaggedRows& out) {
  const int64_t p0 = array.offset + first;
  const auto* validity = array.null_count != 0 ? static_cast<const uint8_t*>(array.buffers[0]) : nullptr;
  const auto* offsets = static_cast<const Offset*>(array.buffers[1]);
  const auto* data = static_cast<const uint8_t*>(array.buffers[2]);
  out.ends.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p0 + i;
    if (validity && !((validity[p >> 3] >> (p & 7)) & 1)) null_row(t.name, i);
    if (offsets[p + 1] < offsets[p] || offsets[p] < offsets[p0])
      throw ColumnError("column '" + t.name + "' is a malformed Arrow array: string offsets decrease at row " +
                        std::to_string(i), i);
    out.ends[static_cast<size_t>(i)] = static_cast<int64_t>(offsets[p + 1] - offsets[p0]);
  }
  const int64_t bytes = n ? out.ends.back() : 0;
  out.values.resize(static_cast<size_t>(bytes));
  if (bytes) std::memcpy(out.values.data(), data + offsets[p0], static_cast<size_t>(bytes));
}

void convert_strings(const ArrowSchema& schema, const ArrowArray& array, int64_t first, int64_t n,
                     const ColumnTarget& t, RaggedRows& out) {
  const std::string f = schema.format ? schema.format : "";
  const bool narrow = f == "u" || f == "z", wide = f == "U" || f == "Z";
  if (!narrow && !wide)
    throw ColumnError("column '" + t.name + "' has Arrow type " + describe_arrow_type(schema) +
                      "; a Keras input of dtype string takes a string or binary column");
  if (array.n_buffers != 3 || !array.buffers || array.offset < 0 || first < 0 || first + n > array.length ||
      (n > 0 && (!array.buffers[1] || !array.buffers[2])))
    throw ColumnError("column '" + t.name + "' is a malformed Arrow string array");
  if (narrow) copy_strings<int32_t>(array, first, n, t, out);
  else copy_strings<int64_t>(array, first, n, t, out);
}

// "at row <entry>" of an error from converting the child's entries -> the row (and step) it is in.
[[noreturn]] void rethrow_at_row(const ColumnError& e, const std::vector<int64_t>& starts) {
  const auto it = std::upper_bound(starts.begin(), starts.end(), e.row);
  const int64_t row = static_cast<int64_t>(it - starts.begin()) - 1;
  std::string message = e.what();
  const std::string at = "at row " + std::to_string(e.row);
  const std::string now = "at row " + std::to_string(row) + " (step " + std::to_string(e.row - starts[row]) + ")";
  const size_t p = message.find(at);
  if (p != std::string::npos) message.replace(p, at.size(), now);
  throw ColumnError(message, row);
}

void convert_sequences(const ArrowSchema& schema, const ArrowArray& array, int64_t first, int64_t n,
                       ColumnTarget& t, const RaggedSpec& spec, RaggedRows& out) {
  const ArrowView view(schema, array, first, n, t.name);
  if (view.kind() != ArrowKind::List && view.kind() != ArrowKind::LargeList && view.kind() != ArrowKind::FixedList)
    throw ColumnError("column '" + t.name + "' has Arrow type " + describe_arrow_type(schema) +
                      "; a Keras input of shape " + t.shape_text() + " takes an array column (one row a sequence)");
  const int64_t j = view.first_null(0, n);
  if (j >= 0) null_row(t.name, j);
  std::vector<int64_t> starts(static_cast<size_t>(n));
  out.ends.resize(static_cast<size_t>(n));
  const ListRange all = view.list_ranges(0, n);
  int64_t first_step = -1;
  for (int64_t i = 0; i < n; ++i) {
    const ListRange r = view.list_range(i);
    check_length(t, spec, r.length(), i);
    starts[static_cast<size_t>(i)] = r.begin;
    out.ends[static_cast<size_t>(i)] = r.end - all.begin;
    if (first_step < 0 && r.length() > 0) first_step = r.begin;
  }
  ColumnTarget step{t.name, t.dtype, std::vector<int64_t>(t.shape.begin() + 1, t.shape.end()), t.allow_non_finite};
  try {
    if (first_step >= 0 && !step.resolved()) resolve_shape(view.child(), first_step, step);
    std::copy(step.shape.begin(), step.shape.end(), t.shape.begin() + 1);
    if (all.length() == 0) return out.values.clear();
    out.values.resize(step.bytes_for(all.length()));
    convert_rows(view.child(), all.begin, all.end, step, out.values.data());
  } catch (const ColumnError& e) {
    if (e.row < 0) throw;
    rethrow_at_row(e, starts);
  }
}

void fill_steps(uint8_t* dst, int64_t steps, const PadSpec& spec, bool zero) {
  const size_t bytes = static_cast<size_t>(steps) * spec.step_bytes;
  if (zero) return (void)std::memset(dst, 0, bytes);
  for (int64_t s = 0; s < steps; ++s) std::memcpy(dst + s * spec.step_bytes, spec.pad_step.data(), spec.step_bytes);
}

}  // namespace

void convert_ragged(const ArrowSchema& schema, const ArrowArray& array, int64_t first, int64_t n,
                    ColumnTarget& target, const RaggedSpec& spec, RaggedRows& out) {
  if (spec.strings) return convert_strings(schema, array, first, n, target, out);
  if (target.shape.empty())
    throw ColumnError("column '" + target.name + "': internal: a sequence column needs a steps dimension");
  convert_sequences(schema, array, first, n, target, spec, out);
}

std::string offsets_path(const std::string& values_path) { return values_path + ".offsets"; }

RaggedOffsetsWriter::RaggedOffsetsWriter(std::string path) : path_(std::move(path)) {
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) throw std::runtime_error("cannot create cache file " + path_);
  const int64_t zero = 0;  // offsets[0]
  if (std::fwrite(&zero, sizeof zero, 1, file_) != 1) throw std::runtime_error("cannot write cache file " + path_);
}

RaggedOffsetsWriter::~RaggedOffsetsWriter() {
  if (file_) std::fclose(file_);
}

void RaggedOffsetsWriter::append(const std::vector<int64_t>& ends) {
  if (!file_) throw std::runtime_error("RaggedOffsetsWriter: append after finish");
  buffer_.clear();
  for (int64_t e : ends) buffer_.push_back(total_ + e);
  if (!ends.empty()) total_ += ends.back();
  if (!buffer_.empty() && std::fwrite(buffer_.data(), sizeof(int64_t), buffer_.size(), file_) != buffer_.size())
    throw std::runtime_error("cannot write cache file " + path_ + " (disk full?)");
}

void RaggedOffsetsWriter::finish() {
  if (!file_) return;
  const bool ok = std::fflush(file_) == 0;
  std::fclose(file_);
  file_ = nullptr;
  if (!ok) throw std::runtime_error("cannot write cache file " + path_);
}

void check_ragged_chunk(const RaggedChunk& chunk, size_t step_bytes, const std::string& what) {
  if (!chunk.offsets || chunk.offsets[0] != 0) throw std::runtime_error(what + ": offsets must start at 0");
  for (int64_t r = 0; r < chunk.rows; ++r)
    if (chunk.offsets[r + 1] < chunk.offsets[r]) throw std::runtime_error(what + ": offsets decrease");
  const int64_t steps = chunk.offsets[chunk.rows];
  if (step_bytes && static_cast<size_t>(steps) > chunk.values_bytes / step_bytes)
    throw std::runtime_error(what + ": offsets point past the values");
}

PaddedBatch gather_padded(const PadSpec& spec, const std::vector<RaggedChunk>& chunks, const uint64_t* rows,
                          size_t n, int row_bits) {
  const uint64_t mask = (uint64_t{1} << row_bits) - 1;
  auto chunk_of = [&](uint64_t ref) -> const RaggedChunk& {
    const uint64_t c = ref >> row_bits;
    if (c >= chunks.size() || static_cast<int64_t>(ref & mask) >= chunks[c].rows)
      throw std::runtime_error("a ragged cache file is shorter than its rows");
    return chunks[c];
  };
  int64_t longest = 0;
  for (size_t i = 0; i < n; ++i) longest = std::max(longest, chunk_of(rows[i]).length(rows[i] & mask));
  PaddedBatch out;
  out.length = spec.length >= 0 ? spec.length : std::max<int64_t>(1, longest);
  const size_t row_bytes = static_cast<size_t>(out.length) * spec.step_bytes;
  void* p = nullptr;
  if (posix_memalign(&p, 64, std::max<size_t>(64, row_bytes * n)) != 0) throw std::bad_alloc();
  out.data = static_cast<uint8_t*>(p);
  const bool zero = std::all_of(spec.pad_step.begin(), spec.pad_step.end(), [](uint8_t b) { return b == 0; });
  for (size_t i = 0; i < n; ++i) {
    const RaggedChunk& chunk = chunk_of(rows[i]);
    const int64_t row = static_cast<int64_t>(rows[i] & mask);
    const int64_t length = chunk.length(row), take = std::min(length, out.length);
    const int64_t skip = length > take && spec.truncate_pre ? length - take : 0;
    uint8_t* dst = out.data + i * row_bytes;
    uint8_t* values_at = dst + (spec.pad_pre ? (out.length - take) * spec.step_bytes : 0);
    fill_steps(spec.pad_pre ? dst : dst + take * spec.step_bytes, out.length - take, spec, zero);
    if (take > 0)
      std::memcpy(values_at, chunk.values + (chunk.offsets[row] + skip) * spec.step_bytes,
                  static_cast<size_t>(take) * spec.step_bytes);
    out.real_steps += take;
  }
  return out;
}

std::vector<uint8_t> pad_step_of(double value, DType dtype, int64_t step_elements) {
  const size_t size = dtype_size(dtype);
  std::vector<uint8_t> one(size);
  const CastResult r = cast_values('g', &value, 0, 1, dtype, true, one.data());
  if (r.index >= 0)
    throw ColumnError("the padding value " + value_text('g', &value, 0) + " is not a " + dtype_name(dtype) +
                      " value (" + dtype_range(dtype) + "); pass a pad_value the input's dtype can hold");
  std::vector<uint8_t> step(size * static_cast<size_t>(std::max<int64_t>(step_elements, 0)));
  for (size_t i = 0; i < step.size(); i += size) std::memcpy(step.data() + i, one.data(), size);
  return step;
}

}  // namespace keras_spark
