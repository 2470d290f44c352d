#include "cache_writer.h"

#include <cstring>

namespace keras_spark {

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
    offsets_.emplace_back(columns_[i].ragged ? new RaggedOffsetsWriter(offsets_path(paths_.back())) : nullptr);
    sparse_writers_.push_back(columns_[i].sparse ? std::make_unique<SparseColumnWriter>(paths_.back()) : nullptr);
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
  const std::string name = s.name ? s.name : "";
  const ArrowView view(s, *batch.children[partition_field_], batch.offset, batch.length, name);
  const char f = view.number_format();
  if (view.kind() != ArrowKind::Number || f == 'b' || f == 'f' || f == 'g')
    throw ColumnError("partition column '" + name + "' has Arrow type " + describe_arrow_type(s) +
                      "; expected integer partition ids 0..n");
  ids.resize(static_cast<size_t>(view.length()));
  for (int64_t i = 0; i < view.length(); ++i) {
    if (!view.valid(i))
      throw ColumnError("partition column '" + name + "' has a null partition id at row " +
                        std::to_string(summary_.rows + i) + "; every row needs an integer id 0..n");
    ids[i] = view.integer(i);  // a uint64 past int64 reads as -1
    if (ids[i] < 0 || ids[i] > (int64_t{1} << 62))
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

void CacheWriter::check_batch(const ArrowSchema& schema, const ArrowArray& batch) const {
  if (!schema.format || std::strcmp(schema.format, "+s") != 0)
    throw ColumnError("CacheWriter expects a record batch (struct array)");
  if (schema.n_children != batch.n_children || batch.length < 0 || batch.offset < 0 ||
      (batch.n_children > 0 && (!schema.children || !batch.children)))
    throw ColumnError("CacheWriter: a malformed record batch (schema and array disagree on their columns)");
  auto check_field = [&](int field, const std::string& what) {
    if (field < 0 || field >= schema.n_children || !schema.children[field] || !batch.children[field])
      throw ColumnError("CacheWriter: " + what + " is field " + std::to_string(field) + ", but the batch has " +
                        std::to_string(schema.n_children) + " columns");
  };
  check_field(partition_field_, "the partition column");
  for (const CacheColumn& col : columns_) check_field(col.field_index, "column '" + col.target.name + "'");
}

void CacheWriter::write(const ArrowSchema& schema, const ArrowArray& batch) {
  if (finished_) throw std::runtime_error("CacheWriter: write after finish");
  check_batch(schema, batch);
  const int64_t n = batch.length;
  if (n == 0) return;
  std::vector<int64_t> ids;
  read_partition_ids(schema, batch, ids);
  for (size_t c = 0; c < columns_.size(); ++c) {
    CacheColumn& col = columns_[c];
    try {
      if (col.ragged) {
        convert_ragged(*schema.children[col.field_index], *batch.children[col.field_index], batch.offset, n,
                       col.target, col.ragged_spec, ragged_rows_);
        buffer_.swap(ragged_rows_.values);
      } else {
        const ArrowView view(*schema.children[col.field_index], *batch.children[col.field_index], batch.offset, n,
                             col.target.name);
        if (sparse_writers_[c]) {  // entries to its own files; the rows' end offsets to this column's file
          sparse_writers_[c]->write(view, n, col.target, buffer_);
        } else {
          resolve_shape(view, 0, col.target);
          buffer_.resize(col.target.bytes_for(n));
          convert_rows(view, 0, n, col.target, buffer_.data());
        }
      }
    } catch (const ColumnError& e) {
      if (e.row < 0) throw;
      // Where the row is, right after the row: "at row 7 of a batch, in partition id 3; ..."
      std::string message = e.what();
      const std::string at = "at row " + std::to_string(e.row);
      const size_t p = message.find(at);
      const std::string where = " of a batch, in partition id " + std::to_string(ids[e.row]);
      if (p == std::string::npos) message += where; else message.insert(p + at.size(), where);
      throw ColumnError(message, e.row);
    }
    if (!buffer_.empty() && std::fwrite(buffer_.data(), 1, buffer_.size(), files_[c]) != buffer_.size())
      throw std::runtime_error("cannot write cache file " + paths_[c] + " (disk full?)");
    if (offsets_[c]) offsets_[c]->append(ragged_rows_.ends);
  }
  note_runs(ids);
  summary_.rows += n;
}

CacheSummary CacheWriter::finish() {
  if (!finished_) {
    for (size_t c = 0; c < files_.size(); ++c)
      if (std::fflush(files_[c]) != 0) throw std::runtime_error("cannot write cache file " + paths_[c]);
    for (auto& sparse : sparse_writers_)
      if (sparse) sparse->finish();
    close_files();
    for (auto& offsets : offsets_)
      if (offsets) offsets->finish();
    finished_ = true;
    summary_.files = paths_;
    for (const CacheColumn& col : columns_) summary_.shapes.push_back(col.target.shape);
  }
  return summary_;
}

}  // namespace keras_spark
