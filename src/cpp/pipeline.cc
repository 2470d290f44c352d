#include "pipeline.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace keras_spark {
namespace {

constexpr int kRowBits = 40;
constexpr uint64_t kRowMask = (uint64_t{1} << kRowBits) - 1;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

uint8_t* allocate(size_t bytes) {
  // 64-byte aligned so NumPy and the backends can use the buffer without copying.
  void* p = nullptr;
  if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) throw std::bad_alloc();
  return static_cast<uint8_t*>(p);
}

}  // namespace

size_t ColumnLayout::row_bytes() const {
  if (sparse) return sizeof(int64_t);  // the row's end offset
  int64_t n = static_cast<int64_t>(dtype_size(dtype));
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n))
      throw std::invalid_argument("a column's per-row shape is negative or past 64 bits");
  return static_cast<size_t>(n);
}

Batch::Batch(Batch&& other) noexcept
    : buffers(std::move(other.buffers)), sparse(std::move(other.sparse)), rows(other.rows),
      lengths(std::move(other.lengths)), real_steps(other.real_steps), padded_steps(other.padded_steps) {
  other.buffers.clear();
}
Batch& Batch::operator=(Batch&& other) noexcept {
  for (uint8_t* b : buffers) std::free(b);
  buffers = std::move(other.buffers);
  sparse = std::move(other.sparse);
  other.buffers.clear();
  rows = other.rows;
  lengths = std::move(other.lengths);
  real_steps = other.real_steps;
  padded_steps = other.padded_steps;
  return *this;
}
Batch::~Batch() {
  for (uint8_t* b : buffers) std::free(b);
}

MappedFile::MappedFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open cache file " + path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot stat cache file " + path);
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw std::runtime_error("cannot map cache file " + path);
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

void MappedFile::release(size_t offset, size_t bytes) const {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t begin = (offset + page - 1) / page * page;  // whole pages inside the range only
  const size_t end = std::min(size_, offset + bytes) / page * page;
  if (data_ && end > begin) ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---- BatchPlanner ------------------------------------------------------------------------------
BatchPlanner::BatchPlanner(std::vector<std::vector<Segment>> partitions, const PipelineOptions& options)
    : partitions_(std::move(partitions)), options_(options), epoch_(options.first_epoch) {
  for (const auto& p : partitions_)
    for (const Segment& s : p) total_rows_ += s.count;
  start_epoch();
}

uint64_t BatchPlanner::draw(uint64_t bound) {
  // Lemire's nearly divisionless bounded draw: the same numbers on every platform.
  uint64_t x = splitmix64(rng_state_);
  __uint128_t m = static_cast<__uint128_t>(x) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = -bound % bound;
    while (low < threshold) {
      x = splitmix64(rng_state_);
      m = static_cast<__uint128_t>(x) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

void BatchPlanner::start_epoch() {
  uint64_t mix = options_.seed;
  rng_state_ = splitmix64(mix) ^ (static_cast<uint64_t>(epoch_) * 0xD1B54A32D192ED03ull);
  order_.resize(partitions_.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
  if (options_.shuffle)
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[draw(i)]);
  next_partition_ = 0;
  served_in_epoch_ = 0;
  open_rows_ = 0;
  cursor_ = 0;
  slots_.clear();
  const size_t cycle = static_cast<size_t>(options_.cycle_length < 1 ? 1 : options_.cycle_length);
  while (slots_.size() < cycle) {
    Slot slot;
    if (!open_next(slot)) break;
    slots_.push_back(std::move(slot));
  }
}

bool BatchPlanner::open_next(Slot& slot) {
  while (next_partition_ < order_.size()) {
    slot.partition = order_[next_partition_++];
    const auto& segments = partitions_[slot.partition];
    slot.rows.clear();
    slot.position = 0;
    int64_t count = 0;
    for (const Segment& s : segments) count += s.count;
    slot.rows.reserve(static_cast<size_t>(count));
    for (const Segment& s : segments)
      for (int64_t r = 0; r < s.count; ++r)
        slot.rows.push_back((static_cast<uint64_t>(s.chunk) << kRowBits) | static_cast<uint64_t>(s.start + r));
    if (slot.rows.empty()) continue;
    if (options_.shuffle)
      for (size_t i = slot.rows.size(); i > 1; --i) std::swap(slot.rows[i - 1], slot.rows[draw(i)]);
    open_rows_ += slot.rows.size();
    return true;
  }
  return false;
}

void BatchPlanner::bucket_by(std::function<int64_t(uint64_t)> length, std::vector<int64_t> boundaries) {
  length_ = std::move(length);
  boundaries_ = std::move(boundaries);
  std::sort(boundaries_.begin(), boundaries_.end());
  staged_.assign(boundaries_.size() + 1, {});
  std::vector<int64_t> counts(staged_.size(), 0);
  for (const auto& p : partitions_)
    for (const Segment& s : p)
      for (int64_t r = 0; r < s.count; ++r)
        ++counts[bucket_of((static_cast<uint64_t>(s.chunk) << kRowBits) | static_cast<uint64_t>(s.start + r))];
  const int64_t batch = options_.batch_size;
  bucketed_steps_ = 0;
  int64_t rest = 0;
  for (int64_t c : counts) {
    bucketed_steps_ += options_.merge_bucket_tails ? c / batch : (c + batch - 1) / batch;
    rest += c % batch;
  }
  if (options_.merge_bucket_tails) bucketed_steps_ += (rest + batch - 1) / batch;
}

size_t BatchPlanner::bucket_of(uint64_t row) const {
  const int64_t length = length_(row);
  return static_cast<size_t>(std::upper_bound(boundaries_.begin(), boundaries_.end(), length) - boundaries_.begin());
}

int64_t BatchPlanner::steps_per_epoch() const {
  if (length_) return bucketed_steps_;
  return (total_rows_ + options_.batch_size - 1) / options_.batch_size;
}

void BatchPlanner::next(std::vector<uint64_t>& rows) {
  rows.clear();
  const bool staged = std::any_of(staged_.begin(), staged_.end(), [](const auto& b) { return !b.empty(); });
  if (served_in_epoch_ == total_rows_ && !staged) {
    ++epoch_;
    start_epoch();
  }
  if (length_) {
    while (served_in_epoch_ < total_rows_) {
      const uint64_t row = take_one();
      auto& bucket = staged_[bucket_of(row)];
      bucket.push_back(row);
      if (static_cast<int64_t>(bucket.size()) == options_.batch_size) return rows.swap(bucket);
    }
    if (options_.merge_bucket_tails) {  // the epoch's last rows: the buckets in order, cut into batches
      for (auto& bucket : staged_)
        while (!bucket.empty() && static_cast<int64_t>(rows.size()) < options_.batch_size) {
          rows.push_back(bucket.back());
          bucket.pop_back();
        }
      return;
    }
    for (auto& bucket : staged_)  // the epoch's last rows: each part-filled bucket is a batch
      if (!bucket.empty()) return rows.swap(bucket);
    return;
  }
  while (static_cast<int64_t>(rows.size()) < options_.batch_size && !slots_.empty()) rows.push_back(take_one());
}

uint64_t BatchPlanner::take_one() {
  size_t pick;
  if (options_.shuffle) {
    uint64_t r = draw(open_rows_);
    for (pick = 0; r >= slots_[pick].remaining(); ++pick) r -= slots_[pick].remaining();
  } else {
    pick = cursor_;
    cursor_ = cursor_ + 1;
  }
  Slot& slot = slots_[pick];
  const uint64_t row = slot.rows[slot.position++];
  ++served_in_epoch_;
  --open_rows_;
  if (slot.remaining() == 0) finished_.push_back(slot.partition);
  if (slot.remaining() == 0 && !open_next(slot)) {
    slots_.erase(slots_.begin() + static_cast<std::ptrdiff_t>(pick));
    if (!options_.shuffle && cursor_ > pick) --cursor_;
  }
  if (!slots_.empty() && cursor_ >= slots_.size()) cursor_ = 0;
  return row;
}

std::vector<size_t> BatchPlanner::take_finished() {
  std::vector<size_t> out;
  out.swap(finished_);
  return out;
}

// ---- Pipeline ----------------------------------------------------------------------------------
Pipeline::Pipeline(const std::vector<std::vector<std::string>>& chunk_files, std::vector<ColumnLayout> columns,
                   std::vector<std::vector<Segment>> partitions, const PipelineOptions& options)
    : columns_(std::move(columns)), planner_(std::move(partitions), options), options_(options) {
  if (options_.batch_size < 1) throw std::invalid_argument("batch_size must be at least 1");
  if (planner_.total_rows() == 0) throw std::invalid_argument("the pipeline has no rows");
  for (const auto& files : chunk_files) {
    if (files.size() != columns_.size())
      throw std::invalid_argument("each chunk needs one file per column");
    std::vector<std::unique_ptr<MappedFile>> mapped;
    for (const std::string& path : files) mapped.push_back(std::make_unique<MappedFile>(path));
    files_.push_back(std::move(mapped));
  }
  map_ragged(chunk_files);
  sparse_sources_.resize(columns_.size());
  for (size_t c = 0; c < columns_.size(); ++c)
    for (size_t chunk = 0; columns_[c].sparse && chunk < files_.size(); ++chunk) {
      sparse_files_.push_back(std::make_unique<SparseColumnFiles>(chunk_files[chunk][c]));
      sparse_sources_[c].push_back({files_[chunk][c].get(), sparse_files_.back().get()});
    }
  check_segments(planner_.partition_count());
  const int b = options_.bucket_column;
  if (b >= 0) {
    if (static_cast<size_t>(b) >= columns_.size() || !columns_[b].pad)
      throw std::invalid_argument("bucket_column must name a ragged column");
    planner_.bucket_by([this, b](uint64_t row) { return ragged_[b][row >> kRowBits].length(row & kRowMask); },
                       options_.bucket_boundaries);
  }
  steps_per_epoch_ = planner_.steps_per_epoch();
  const int threads = options_.num_threads < 1 ? 1 : options_.num_threads;
  if (options_.prefetch < threads) options_.prefetch = threads;
  stats_.threads = threads;
  for (int i = 0; i < threads; ++i) workers_.emplace_back(&Pipeline::work, this);
}

void Pipeline::map_ragged(const std::vector<std::vector<std::string>>& chunk_files) {
  ragged_.assign(columns_.size(), {});
  for (size_t k = 0; k < chunk_files.size(); ++k) {
    std::vector<std::unique_ptr<MappedFile>> mapped(columns_.size());
    for (size_t c = 0; c < columns_.size(); ++c) {
      if (!columns_[c].pad) continue;
      mapped[c] = std::make_unique<MappedFile>(offsets_path(chunk_files[k][c]));
      const MappedFile& offsets = *mapped[c];
      if (offsets.size() < sizeof(int64_t) || offsets.size() % sizeof(int64_t) != 0)
        throw std::invalid_argument("ragged offsets file of column " + std::to_string(c) + " of chunk " +
                                    std::to_string(k) + " is not a whole number of offsets");
      RaggedChunk chunk{files_[k][c]->data(), files_[k][c]->size(), reinterpret_cast<const int64_t*>(offsets.data()),
                        static_cast<int64_t>(offsets.size() / sizeof(int64_t)) - 1};
      check_ragged_chunk(chunk, columns_[c].pad->step_bytes,
                         "cache file " + std::to_string(c) + " of chunk " + std::to_string(k));
      ragged_[c].push_back(chunk);
    }
    offsets_files_.push_back(std::move(mapped));
  }
}

void Pipeline::check_segments(size_t partitions) const {
  // Rows are addressed as (chunk << 40 | row) and read from mapped files: every segment
  // must name a chunk that exists and rows its files hold.
  for (size_t p = 0; p < partitions; ++p)
    for (const Segment& s : planner_.segments(p)) {
      if (s.chunk < 0 || static_cast<size_t>(s.chunk) >= files_.size() || s.chunk >= (int64_t{1} << (64 - kRowBits)))
        throw std::invalid_argument("partition " + std::to_string(p) + " names chunk " + std::to_string(s.chunk) +
                                    ", but there are " + std::to_string(files_.size()) + " chunks");
      if (s.start < 0 || s.count < 0 || s.start + s.count > (int64_t{1} << kRowBits))
        throw std::invalid_argument("partition " + std::to_string(p) + " has rows outside 0..2**40");
      for (size_t c = 0; c < columns_.size(); ++c) {
        if (columns_[c].pad) {
          if (s.start + s.count > ragged_[c][s.chunk].rows)
            throw std::invalid_argument("partition " + std::to_string(p) + " has rows past the end of the offsets "
                                        "of cache file " + std::to_string(c) + " of chunk " + std::to_string(s.chunk));
          continue;
        }
        const size_t rb = columns_[c].row_bytes();
        if (rb > 0 && static_cast<size_t>(s.start + s.count) > files_[s.chunk][c]->size() / rb)
          throw std::invalid_argument("partition " + std::to_string(p) + " has rows past the end of cache file " +
                                      std::to_string(c) + " of chunk " + std::to_string(s.chunk));
      }
    }
}

Pipeline::~Pipeline() { close(); }

void Pipeline::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_ && workers_.empty()) return;
    closed_ = true;
  }
  space_cv_.notify_all();
  ready_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  std::lock_guard<std::mutex> lock(mutex_);
  ready_.clear();
}

namespace {

// Copies of one row: fixed small sizes compile to plain loads and stores.
template <size_t N>
void copy_rows(uint8_t* out, const uint8_t* base, const uint64_t* rows, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (i + 8 < n) __builtin_prefetch(base + (rows[i + 8] & kRowMask) * N);
    std::memcpy(out + i * N, base + (rows[i] & kRowMask) * N, N);
  }
}

}  // namespace

Batch Pipeline::gather(const std::vector<uint64_t>& rows) {
  Batch batch;
  batch.rows = static_cast<int64_t>(rows.size());
  batch.buffers.reserve(columns_.size());
  batch.lengths.assign(columns_.size(), -1);
  batch.sparse.resize(columns_.size());
  for (size_t c = 0; c < columns_.size(); ++c) {
    if (columns_[c].sparse) {
      batch.buffers.push_back(nullptr);
      batch.sparse[c] = gather_sparse(rows, kRowBits, sparse_sources_[c], columns_[c].shape.at(0), columns_[c].dtype,
                                      options_.sparse_layout);
      continue;
    }
    if (columns_[c].pad) {
      const PaddedBatch padded = gather_padded(*columns_[c].pad, ragged_[c], rows.data(), rows.size(), kRowBits);
      batch.buffers.push_back(padded.data);
      batch.lengths[c] = padded.length;
      batch.real_steps += padded.real_steps;
      batch.padded_steps += padded.length * static_cast<int64_t>(rows.size());
      continue;
    }
    const size_t rb = columns_[c].row_bytes();
    uint8_t* out = allocate(rb * rows.size());
    batch.buffers.push_back(out);
    if (rb == 0) continue;  // a zero-width column: nothing to copy (its file may be unmapped)
    size_t i = 0;
    while (i < rows.size()) {
      // One stretch of rows from one file: a run of consecutive rows is one memcpy,
      // scattered rows are copied with the next rows prefetched (random gathers are latency-bound).
      const uint64_t chunk = rows[i] >> kRowBits;
      size_t j = i + 1;
      bool consecutive = true;
      while (j < rows.size() && (rows[j] >> kRowBits) == chunk) {
        consecutive = consecutive && rows[j] == rows[j - 1] + 1;
        ++j;
      }
      const MappedFile& f = *files_[chunk][c];
      for (size_t k = i; k < j; ++k)
        if (((rows[k] & kRowMask) + 1) * rb > f.size()) throw std::runtime_error("cache file shorter than its rows");
      const uint8_t* base = f.data();
      uint8_t* dst = out + i * rb;
      if (consecutive) {
        std::memcpy(dst, base + (rows[i] & kRowMask) * rb, (j - i) * rb);
      } else {
        switch (rb) {
          case 4: copy_rows<4>(dst, base, rows.data() + i, j - i); break;
          case 8: copy_rows<8>(dst, base, rows.data() + i, j - i); break;
          case 16: copy_rows<16>(dst, base, rows.data() + i, j - i); break;
          case 64: copy_rows<64>(dst, base, rows.data() + i, j - i); break;
          case 128: copy_rows<128>(dst, base, rows.data() + i, j - i); break;
          default:
            for (size_t k = i; k < j; ++k) {
              if (k + 8 < j) __builtin_prefetch(base + (rows[k + 8] & kRowMask) * rb);
              std::memcpy(out + k * rb, base + (rows[k] & kRowMask) * rb, rb);
            }
        }
      }
      i = j;
    }
  }
  return batch;
}

void Pipeline::release(const std::vector<size_t>& partitions) const {
  for (size_t p : partitions)
    for (const Segment& s : planner_.segments(p))
      for (size_t c = 0; c < columns_.size(); ++c) {
        if (columns_[c].pad) {
          const RaggedChunk& chunk = ragged_[c][s.chunk];
          const int64_t begin = chunk.offsets[s.start], end = chunk.offsets[s.start + s.count];
          const size_t step = columns_[c].pad->step_bytes;
          files_[s.chunk][c]->release(static_cast<size_t>(begin) * step, static_cast<size_t>(end - begin) * step);
          offsets_files_[s.chunk][c]->release(static_cast<size_t>(s.start) * 8, static_cast<size_t>(s.count) * 8);
          continue;
        }
        const size_t rb = columns_[c].row_bytes();
        files_[s.chunk][c]->release(static_cast<size_t>(s.start) * rb, static_cast<size_t>(s.count) * rb);
        if (columns_[c].sparse) release_sparse(sparse_sources_[c][s.chunk], s.start, s.count, columns_[c].dtype);
      }
}

void Pipeline::work() {
  std::vector<uint64_t> rows;
  while (true) {
    int64_t id;
    {
      // Planning is sequential (batch ids in order) but holds only plan_mutex_, so the
      // consumer and the other workers' hand-offs never wait for it.
      std::lock_guard<std::mutex> plan_lock(plan_mutex_);
      {
        std::unique_lock<std::mutex> lock(mutex_);
        space_cv_.wait(lock, [&] { return closed_ || planned_ < consumed_ + options_.prefetch; });
        if (closed_) return;
        id = planned_++;
      }
      planner_.next(rows);
      std::vector<size_t> finished = planner_.take_finished();
      if (!finished.empty()) {
        // Released once this batch is consumed: earlier batches still gathering those rows
        // would fault the pages straight back in.
        std::lock_guard<std::mutex> lock(mutex_);
        to_release_.emplace_back(id, std::move(finished));
      }
    }
    const auto start = std::chrono::steady_clock::now();
    Batch batch;
    try {
      batch = gather(rows);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      ready_cv_.notify_all();
      return;
    }
    const double took = seconds_since(start);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.gather_s += took;
      ready_.emplace(id, std::move(batch));
    }
    ready_cv_.notify_all();
  }
}

Batch Pipeline::next() {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  ready_cv_.wait(lock, [&] { return closed_ || error_ || ready_.count(consumed_) > 0; });
  if (ready_.count(consumed_) == 0) {
    if (error_) std::rethrow_exception(error_);
    throw std::runtime_error("the pipeline is closed");
  }
  Batch batch = std::move(ready_[consumed_]);
  ready_.erase(consumed_);
  std::vector<size_t> done;
  while (!to_release_.empty() && to_release_.front().first <= consumed_) {
    done.insert(done.end(), to_release_.front().second.begin(), to_release_.front().second.end());
    to_release_.pop_front();
  }
  ++consumed_;
  stats_.consumer_wait_s += seconds_since(start);
  stats_.rows += batch.rows;
  stats_.batches += 1;
  for (size_t c = 0; c < columns_.size(); ++c)
    stats_.bytes += columns_[c].sparse ? sparse_bytes(batch.sparse[c], columns_[c].dtype, options_.sparse_layout)
                    : columns_[c].pad ? batch.lengths[c] * static_cast<int64_t>(columns_[c].pad->step_bytes) * batch.rows
                                      : static_cast<int64_t>(columns_[c].row_bytes()) * batch.rows;
  stats_.real_steps += batch.real_steps;
  stats_.padded_steps += batch.padded_steps;
  lock.unlock();
  space_cv_.notify_all();
  if (!done.empty()) release(done);
  return batch;
}

int64_t Pipeline::epoch() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return options_.first_epoch + consumed_ / steps_per_epoch_;
}

int64_t Pipeline::step() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return consumed_ % steps_per_epoch_;
}

PipelineStats Pipeline::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace keras_spark
