#include "cache_writer.h"

#include <cstring>

namespace keras_spark {
namespace {

template <typename T>
void read_ids(const ArrowArray& a, int64_t first, int64_t n, std::vector<int64_t>& ids) {
  const T* values = static_cast<const T*>(a.buffers[1]) + a.offset + first;
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int64_t>(values[i]);
}

}  // namespace

CacheWriter::CacheWriter(std::string path_prefix, std::vector<CacheColumn> columns, int partition_field)
    : columns_(std::move(columns)), partition_field_(partition_field) {
  for (size_t i = 0; i < columns_.size(); ++i) {
    paths_.push_back(path_prefix + "." + std::to_string(i) + ".bin");
    std::FILE* f = std::fopen(paths_.back().c_str(), "wb");
    if (!f) {
      close_files();
      throw std::runtime_error("cannot create cache file " + paths_.back());
    }
    std::setvbuf(f, nullptr, _IOFBF, 1 << 20);
    files_.push_back(f);
  }
}

CacheWriter::~CacheWriter() { close_files(); }

void CacheWriter::close_files() {
  for (std::FILE* f : files_)
    if (f) std::fclose(f);
  files_.clear();
}

void CacheWriter::read_partition_ids(const ArrowSchema& schema, const ArrowArray& batch,
                                     std::vector<int64_t>& ids) const {
  const ArrowSchema& s = *schema.children[partition_field_];
  const ArrowArray& a = *batch.children[partition_field_];
  const std::string name = s.name ? s.name : "";
  const std::string f = s.format;
  const int64_t first = batch.offset, n = batch.length;
  ids.resize(static_cast<size_t>(n));
  if (f == "c") read_ids<int8_t>(a, first, n, ids);
  else if (f == "s") read_ids<int16_t>(a, first, n, ids);
  else if (f == "i") read_ids<int32_t>(a, first, n, ids);
  else if (f == "l") read_ids<int64_t>(a, first, n, ids);
  else if (f == "C") read_ids<uint8_t>(a, first, n, ids);
  else if (f == "S") read_ids<uint16_t>(a, first, n, ids);
  else if (f == "I") read_ids<uint32_t>(a, first, n, ids);
  else if (f == "L") read_ids<uint64_t>(a, first, n, ids);
  else
    throw ColumnError("partition column '" + name + "' has Arrow type " + describe_arrow_type(s) +
                      "; expected integer partition ids 0..n");
  const bool may_have_nulls = a.null_count != 0 && a.n_buffers > 0 && a.buffers[0] != nullptr;
  for (int64_t i = 0; i < n; ++i) {
    if (may_have_nulls) {
      const int64_t p = a.offset + first + i;
      if (!((static_cast<const uint8_t*>(a.buffers[0])[p >> 3] >> (p & 7)) & 1))
        throw ColumnError("partition column '" + name + "' has a null partition id at row " +
                          std::to_string(summary_.rows + i) + "; every row needs an integer id 0..n");
    }
    if (ids[i] < 0 || (f == "L" && static_cast<uint64_t>(ids[i]) > (1ull << 62)))
      throw ColumnError("partition column '" + name + "' has a negative partition id " + std::to_string(ids[i]) +
                        " at row " + std::to_string(summary_.rows + i) + "; expected integer ids 0..n");
  }
}

void CacheWriter::note_runs(const std::vector<int64_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    auto& runs = summary_.runs;
    if (!runs.empty() && runs.back().partition_id == ids[i] && runs.back().start + runs.back().count ==
                                                                   summary_.rows + static_cast<int64_t>(i)) {
      ++runs.back().count;
    } else {
      runs.push_back({ids[i], summary_.rows + static_cast<int64_t>(i), 1});
    }
  }
}

void CacheWriter::write(const ArrowSchema& schema, const ArrowArray& batch) {
  if (finished_) throw std::runtime_error("CacheWriter: write after finish");
  if (std::strcmp(schema.format, "+s") != 0) throw ColumnError("CacheWriter expects a record batch (struct array)");
  const int64_t n = batch.length;
  if (n == 0) return;
  std::vector<int64_t> ids;
  read_partition_ids(schema, batch, ids);
  for (size_t c = 0; c < columns_.size(); ++c) {
    CacheColumn& col = columns_[c];
    const ArrowSchema& s = *schema.children[col.field_index];
    const ArrowArray& a = *batch.children[col.field_index];
    try {
      resolve_shape(s, a, batch.offset, 0, col.target);
      buffer_.resize(static_cast<size_t>(n) * col.target.row_bytes());
      convert_rows(s, a, batch.offset, 0, n, col.target, buffer_.data());
    } catch (const ColumnError& e) {
      if (e.row < 0) throw;
      throw ColumnError(std::string(e.what()) + " of a batch, in partition id " + std::to_string(ids[e.row]), e.row);
    }
    if (!buffer_.empty() && std::fwrite(buffer_.data(), 1, buffer_.size(), files_[c]) != buffer_.size())
      throw std::runtime_error("cannot write cache file " + paths_[c] + " (disk full?)");
  }
  note_runs(ids);
  summary_.rows += n;
}

CacheSummary CacheWriter::finish() {
  if (!finished_) {
    for (size_t c = 0; c < files_.size(); ++c)
      if (std::fflush(files_[c]) != 0) throw std::runtime_error("cannot write cache file " + paths_[c]);
    close_files();
    finished_ = true;
    summary_.files = paths_;
    for (const CacheColumn& col : columns_) summary_.shapes.push_back(col.target.shape);
  }
  return summary_;
}

}  // namespace keras_spark
