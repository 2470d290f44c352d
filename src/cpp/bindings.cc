// The only file that knows Python: nanobind bindings of the core as `keras_spark._core`.
//
// Arrow data arrives as PyCapsules (the Arrow PyCapsule protocol) and is borrowed
// for the duration of a call; batches leave as NumPy arrays that own the C++
// buffers through a capsule. The GIL is released around every conversion and wait.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdlib>

#include "cache_writer.h"
#include "columns.h"
#include "pipeline.h"
#include "ragged_column.h"
#include "sparse_column.h"

namespace nb = nanobind;
using namespace keras_spark;

namespace {

template <typename T>
const T& from_capsule(const nb::capsule& capsule, const char* name) {
  void* p = PyCapsule_GetPointer(capsule.ptr(), name);
  if (!p) throw nb::python_error();
  const T* value = static_cast<const T*>(p);
  if constexpr (std::is_same_v<T, ArrowArray>) {
    if (!value->release) throw std::invalid_argument("the Arrow array has already been released");
  }
  return *value;
}

nb::dlpack::dtype dlpack_dtype(DType dtype) {
  using code = nb::dlpack::dtype_code;
  const uint8_t bits = static_cast<uint8_t>(dtype_size(dtype) * 8);
  switch (dtype) {
    case DType::Bool: return {static_cast<uint8_t>(code::Bool), 8, 1};
    case DType::Int8: case DType::Int16: case DType::Int32: case DType::Int64:
      return {static_cast<uint8_t>(code::Int), bits, 1};
    case DType::UInt8: case DType::UInt16: case DType::UInt32: case DType::UInt64:
      return {static_cast<uint8_t>(code::UInt), bits, 1};
    default: return {static_cast<uint8_t>(code::Float), bits, 1};
  }
}

// A NumPy array that owns `data` (malloc'd) through a capsule: no copy.
nb::object owned_array(uint8_t* data, int64_t rows, const std::vector<int64_t>& shape, DType dtype) {
  nb::capsule owner(data, [](void* p) noexcept { std::free(p); });
  std::vector<size_t> dims{static_cast<size_t>(rows)};
  for (int64_t d : shape) dims.push_back(static_cast<size_t>(d));
  nb::ndarray<nb::numpy> array(data, dims.size(), dims.data(), owner, nullptr, dlpack_dtype(dtype));
  return nb::cast(array, nb::rv_policy::reference);
}

// A column's dtype, with ";image=exact|resize|center_crop" after it for an image column.
ImageFit image_fit_of(const std::string& dtype) {
  const size_t p = dtype.find(";image=");
  if (p == std::string::npos) return ImageFit::NotImage;
  const std::string fit = dtype.substr(p + 7);
  if (fit == "exact") return ImageFit::Exact;
  if (fit == "resize") return ImageFit::Resize;
  if (fit == "center_crop") return ImageFit::CenterCrop;
  throw ColumnError("unknown image fit '" + fit + "'; expected exact, resize or center_crop");
}

// A sparse column's batch as (indices [n, 2], values [n], (rows, width)), or batched by row as
// (indices [rows, k, 1], values [rows, k], (rows, width)); the arrays own the C++ buffers.
nb::tuple sparse_arrays(SparseBatchPart& part, int64_t rows, int64_t width, DType dtype, const SparseLayout& layout) {
  const DType index = layout.index_bytes == 8 ? DType::Int64 : DType::Int32;
  const bool batched = layout.batched();
  const int64_t first = batched ? rows : part.capacity;
  const std::vector<int64_t> index_shape = batched ? std::vector<int64_t>{layout.row_entries, 1}
                                                   : std::vector<int64_t>{2};
  const std::vector<int64_t> value_shape = batched ? std::vector<int64_t>{layout.row_entries} : std::vector<int64_t>{};
  nb::object indices = owned_array(part.indices, first, index_shape, index);
  part.indices = nullptr;
  nb::object values = owned_array(part.values, first, value_shape, dtype);
  part.values = nullptr;
  return nb::make_tuple(indices, values, nb::make_tuple(rows, width));
}

SparseLayout sparse_layout_of(const std::string& index_dtype, bool pad, int64_t row_entries = 0) {
  if (index_dtype != "int64" && index_dtype != "int32")
    throw std::invalid_argument("sparse_index_dtype must be 'int64' or 'int32', not '" + index_dtype + "'");
  if (row_entries < 0) throw std::invalid_argument("sparse_row_entries must be 0 (COO) or more");
  return SparseLayout{index_dtype == "int64" ? 8 : 4, pad, row_entries};
}

// A column spec's optional last element: its kind ("dense" or "sparse").
bool is_sparse_kind(const nb::tuple& spec, size_t plain_size) {
  if (spec.size() == plain_size) return false;
  if (spec.size() != plain_size + 1) throw std::invalid_argument("a column spec has the wrong number of elements");
  const std::string kind = nb::cast<std::string>(spec[plain_size]);
  if (kind != "dense" && kind != "sparse") throw std::invalid_argument("unknown column kind '" + kind + "'");
  return kind == "sparse";
}

ColumnTarget target_of(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
                       bool allow_non_finite) {
  ColumnTarget t;
  t.name = name;
  t.dtype = parse_dtype(dtype.substr(0, dtype.find(';')));
  t.image = image_fit_of(dtype);
  t.shape = shape;
  t.allow_non_finite = allow_non_finite;
  return t;
}

nb::tuple to_dense(nb::capsule schema_capsule, nb::capsule array_capsule, const std::string& name,
                   const std::string& dtype, const std::vector<int64_t>& shape, bool allow_non_finite) {
  const ArrowSchema& schema = from_capsule<ArrowSchema>(schema_capsule, "arrow_schema");
  const ArrowArray& array = from_capsule<ArrowArray>(array_capsule, "arrow_array");
  ColumnTarget target = target_of(name, dtype, shape, allow_non_finite);
  uint8_t* out = nullptr;
  {
    nb::gil_scoped_release release;
    const ArrowView view(schema, array, 0, array.length, name);
    resolve_shape(view, 0, target);
    if (!target.resolved()) {  // no rows: unknown dimensions stay empty
      for (int64_t& d : target.shape)
        if (d < 0) d = 0;
    }
    out = static_cast<uint8_t*>(std::malloc(std::max<size_t>(64, target.bytes_for(array.length))));
    if (!out) throw std::bad_alloc();
    try {
      convert_rows(view, 0, array.length, target, out);
    } catch (...) {
      std::free(out);
      throw;
    }
  }
  return nb::make_tuple(owned_array(out, array.length, target.shape, target.dtype), target.shape);
}

using RaggedWrite = std::tuple<int, bool, int64_t>;  // (column, strings, max_length or -1)
// (column, strings, padded length or -1, padding 'pre', truncating 'pre', padding value)
using RaggedPad = std::tuple<int, bool, int64_t, bool, bool, double>;

PadSpec pad_spec_of(const RaggedPad& spec, DType dtype, const std::vector<int64_t>& shape) {
  const auto& [column, strings, length, pad_pre, truncate_pre, value] = spec;
  (void)column;
  PadSpec pad;
  pad.strings = strings;
  pad.length = length;
  pad.pad_pre = pad_pre;
  pad.truncate_pre = truncate_pre;
  int64_t step_elements = 1;
  for (size_t d = 1; !strings && d < shape.size(); ++d) step_elements *= shape[d];
  pad.pad_step = strings ? std::vector<uint8_t>{0} : pad_step_of(value, dtype, step_elements);
  pad.step_bytes = strings ? 1 : static_cast<size_t>(step_elements) * dtype_size(dtype);
  return pad;
}

// One ragged Arrow column padded to a dense (rows, length, ...) array, and each row's own length.
nb::tuple to_padded(nb::capsule schema_capsule, nb::capsule array_capsule, const std::string& name,
                    const std::string& dtype, const std::vector<int64_t>& shape, const RaggedPad& spec,
                    bool truncate) {
  const ArrowSchema& schema = from_capsule<ArrowSchema>(schema_capsule, "arrow_schema");
  const ArrowArray& array = from_capsule<ArrowArray>(array_capsule, "arrow_array");
  ColumnTarget target = target_of(name, dtype, shape, true);
  const bool strings = std::get<1>(spec);
  const int64_t length = std::get<2>(spec);
  PaddedBatch padded;
  uint8_t* lengths = nullptr;
  {
    nb::gil_scoped_release release;
    RaggedRows rows;
    convert_ragged(schema, array, 0, array.length, target, {strings, truncate || length < 0 ? -1 : length}, rows);
    for (int64_t& d : target.shape)
      if (d < 0) d = 0;  // unknown per-step dims of an all-empty batch
    const PadSpec pad = pad_spec_of(spec, target.dtype, target.shape);
    std::vector<int64_t> offsets{0};
    offsets.insert(offsets.end(), rows.ends.begin(), rows.ends.end());
    const RaggedChunk chunk{rows.values.data(), rows.values.size(), offsets.data(), array.length};
    std::vector<uint64_t> refs(static_cast<size_t>(array.length));
    for (size_t i = 0; i < refs.size(); ++i) refs[i] = i;
    padded = gather_padded(pad, {chunk}, refs.data(), refs.size(), 40);
    lengths = static_cast<uint8_t*>(std::malloc(std::max<size_t>(64, refs.size() * sizeof(int64_t))));
    if (!lengths) {
      std::free(padded.data);
      throw std::bad_alloc();
    }
    for (size_t i = 0; i < refs.size(); ++i) reinterpret_cast<int64_t*>(lengths)[i] = chunk.length(i);
  }
  std::vector<int64_t> row_shape{padded.length};
  if (!strings) row_shape.insert(row_shape.end(), target.shape.begin() + 1, target.shape.end());
  return nb::make_tuple(owned_array(padded.data, array.length, row_shape, strings ? DType::UInt8 : target.dtype),
                        owned_array(lengths, array.length, {}, DType::Int64));
}

nb::tuple to_sparse(nb::capsule schema_capsule, nb::capsule array_capsule, const std::string& name,
                    const std::string& dtype, const std::vector<int64_t>& shape, bool allow_non_finite,
                    const std::string& index_dtype, bool pad) {
  const ArrowSchema& schema = from_capsule<ArrowSchema>(schema_capsule, "arrow_schema");
  const ArrowArray& array = from_capsule<ArrowArray>(array_capsule, "arrow_array");
  ColumnTarget target = target_of(name, dtype, shape, allow_non_finite);
  const SparseLayout layout = sparse_layout_of(index_dtype, pad);
  SparseBatchPart part;
  {
    nb::gil_scoped_release release;
    const ArrowView view(schema, array, 0, array.length, name);
    SparseRows rows;
    convert_sparse_rows(view, 0, array.length, target, rows);
    part = coo_of(rows, std::max<int64_t>(0, target.shape[0]), target.dtype, layout);
  }
  return sparse_arrays(part, array.length, target.shape[0] < 0 ? 0 : target.shape[0], target.dtype, layout);
}

class PyCacheWriter {
 public:
  PyCacheWriter(const std::string& prefix, const std::vector<nb::tuple>& columns, int partition_field,
                bool allow_non_finite, const std::vector<RaggedWrite>& ragged)
      : writer_(prefix, make_columns(columns, allow_non_finite, ragged), partition_field) {}

  void write(nb::capsule schema_capsule, nb::capsule array_capsule) {
    const ArrowSchema& schema = from_capsule<ArrowSchema>(schema_capsule, "arrow_schema");
    const ArrowArray& array = from_capsule<ArrowArray>(array_capsule, "arrow_array");
    nb::gil_scoped_release release;
    failed_row_ = -1;
    try {
      writer_.write(schema, array);
    } catch (const ColumnError& e) {
      failed_row_ = e.row;  // the caller names the row (its partition id, position, identifying column)
      throw;
    }
  }

  int64_t failed_row() const { return failed_row_; }

  nb::dict finish() {
    CacheSummary s;
    {
      nb::gil_scoped_release release;
      s = writer_.finish();
    }
    nb::list runs;
    for (const PartitionRun& r : s.runs) runs.append(nb::make_tuple(r.partition_id, r.start, r.count));
    nb::dict out;
    out["rows"] = s.rows;
    out["runs"] = runs;
    out["shapes"] = nb::cast(s.shapes);
    out["files"] = nb::cast(s.files);
    return out;
  }

 private:
  // (name, field index, dtype, shape[, kind]) a column.
  static std::vector<CacheColumn> make_columns(const std::vector<nb::tuple>& columns, bool allow,
                                               const std::vector<RaggedWrite>& ragged) {
    std::vector<CacheColumn> out;
    for (const nb::tuple& c : columns) {
      const bool sparse = is_sparse_kind(c, 4);
      out.push_back({target_of(nb::cast<std::string>(c[0]), nb::cast<std::string>(c[2]),
                               nb::cast<std::vector<int64_t>>(c[3]), allow),
                     nb::cast<int>(c[1]), sparse});
    }
    for (const auto& [column, strings, max_length] : ragged) {
      CacheColumn& c = out.at(static_cast<size_t>(column));
      c.ragged = true;
      c.ragged_spec = {strings, max_length};
    }
    return out;
  }
  CacheWriter writer_;
  int64_t failed_row_ = -1;
};

class PyPipeline {
 public:
  PyPipeline(const std::vector<std::vector<std::string>>& chunk_files, const std::vector<nb::tuple>& columns,
             const std::vector<std::vector<std::tuple<int64_t, int64_t, int64_t>>>& partitions, int64_t batch_size,
             bool shuffle, uint64_t seed, int cycle_length, int num_threads, int prefetch, int64_t first_epoch,
             const std::vector<RaggedPad>& ragged, int bucket_column, const std::vector<int64_t>& bucket_boundaries,
             const std::string& sparse_index_dtype, bool sparse_pad, bool merge_bucket_tails,
             int64_t sparse_row_entries)
      : pipeline_(chunk_files, layouts(columns, ragged), segments(partitions),
                  PipelineOptions{batch_size, shuffle, seed, cycle_length, num_threads, prefetch, first_epoch,
                                  bucket_column, bucket_boundaries, merge_bucket_tails,
                                  sparse_layout_of(sparse_index_dtype, sparse_pad, sparse_row_entries)}) {}

  nb::list next() {
    Batch batch;
    {
      nb::gil_scoped_release release;
      batch = pipeline_.next();
    }
    nb::list out;
    const auto& columns = pipeline_.columns();
    for (size_t c = 0; c < columns.size(); ++c) {
      if (columns[c].sparse) {
        out.append(sparse_arrays(batch.sparse[c], batch.rows, columns[c].shape.at(0), columns[c].dtype,
                                 pipeline_.sparse_layout()));
        continue;
      }
      uint8_t* data = batch.buffers[c];
      batch.buffers[c] = nullptr;  // the NumPy array owns it from here
      if (columns[c].pad) {  // ragged: this batch's padded length, then the per-step shape (strings: bytes)
        std::vector<int64_t> shape{batch.lengths[c]};
        if (!columns[c].pad->strings) shape.insert(shape.end(), columns[c].shape.begin() + 1, columns[c].shape.end());
        out.append(owned_array(data, batch.rows, shape, columns[c].pad->strings ? DType::UInt8 : columns[c].dtype));
        continue;
      }
      out.append(owned_array(data, batch.rows, columns[c].shape, columns[c].dtype));
    }
    return out;
  }

  nb::dict stats() const {
    const PipelineStats s = pipeline_.stats();
    nb::dict out;
    out["rows"] = s.rows;
    out["bytes"] = s.bytes;
    out["batches"] = s.batches;
    out["consumer_wait_s"] = s.consumer_wait_s;
    out["gather_s"] = s.gather_s;
    out["threads"] = s.threads;
    out["real_steps"] = s.real_steps;
    out["padded_steps"] = s.padded_steps;
    return out;
  }

  void close() {
    nb::gil_scoped_release release;
    pipeline_.close();
  }

  Pipeline pipeline_;

 private:
  // (dtype, shape[, kind]) a column.
  static std::vector<ColumnLayout> layouts(const std::vector<nb::tuple>& cols, const std::vector<RaggedPad>& ragged) {
    std::vector<ColumnLayout> out;
    for (const nb::tuple& c : cols) {
      ColumnLayout layout{parse_dtype(nb::cast<std::string>(c[0])), nb::cast<std::vector<int64_t>>(c[1]), nullptr};
      layout.sparse = is_sparse_kind(c, 2);
      out.push_back(std::move(layout));
    }
    for (const RaggedPad& spec : ragged) {
      ColumnLayout& c = out.at(static_cast<size_t>(std::get<0>(spec)));
      c.pad = std::make_shared<const PadSpec>(pad_spec_of(spec, c.dtype, c.shape));
    }
    return out;
  }
  static std::vector<std::vector<Segment>> segments(
      const std::vector<std::vector<std::tuple<int64_t, int64_t, int64_t>>>& partitions) {
    std::vector<std::vector<Segment>> out;
    for (const auto& p : partitions) {
      std::vector<Segment> segs;
      for (const auto& [chunk, start, count] : p) segs.push_back({chunk, start, count});
      out.push_back(std::move(segs));
    }
    return out;
  }
};

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "keras-spark's C++ core: Arrow columns to dense tensors, the local cache, the batch pipeline.";
  nb::exception<ColumnError>(m, "ColumnError", PyExc_ValueError);

  m.def("to_sparse", &to_sparse, nb::arg("schema_capsule"), nb::arg("array_capsule"), nb::arg("name"),
        nb::arg("dtype"), nb::arg("shape"), nb::kw_only(), nb::arg("allow_non_finite") = false,
        nb::arg("sparse_index_dtype") = "int64", nb::arg("sparse_pad") = false,
        "One Arrow Spark ML vector column -> (indices [n, 2], values [n], (rows, width)): its non-zeros as COO.\n\n"
        "sparse_pad pads n to one of a few sizes with entries (0, 0) = 0 (JAX compiles one step per shape).");

  m.def("to_dense", &to_dense, nb::arg("schema_capsule"), nb::arg("array_capsule"), nb::arg("name"),
        nb::arg("dtype"), nb::arg("shape"), nb::kw_only(), nb::arg("allow_non_finite") = false,
        "One Arrow column -> (dense NumPy array of shape (rows, *shape), resolved shape).\n\n"
        "NaN or infinite floats raise ColumnError unless allow_non_finite; so do integers the dtype cannot hold.");

  m.def("to_padded", &to_padded, nb::arg("schema_capsule"), nb::arg("array_capsule"), nb::arg("name"),
        nb::arg("dtype"), nb::arg("shape"), nb::arg("pad"), nb::kw_only(), nb::arg("truncate") = false,
        "One ragged Arrow column (sequences or strings) -> (padded array, each row's length).\n\n"
        "pad is (column, strings, length or -1, padding 'pre', truncating 'pre', padding value); a row longer than "
        "a fixed length raises ColumnError unless truncate.");

  nb::class_<PyCacheWriter>(m, "CacheWriter")
      .def(nb::init<const std::string&, const std::vector<nb::tuple>&, int, bool, const std::vector<RaggedWrite>&>(),
           nb::arg("path_prefix"), nb::arg("columns"), nb::arg("partition_column"), nb::kw_only(),
           nb::arg("allow_non_finite") = false, nb::arg("ragged") = std::vector<RaggedWrite>{},
           "Writes the (name, field index, dtype, shape[, kind]) columns of record batches to cache files;\n"
           "kind 'sparse' keeps a Spark ML vector column as its non-zeros.")
      .def("write", &PyCacheWriter::write, nb::arg("schema_capsule"), nb::arg("array_capsule"))
      .def("finish", &PyCacheWriter::finish)
      .def_prop_ro("failed_row", &PyCacheWriter::failed_row,
                   "The row, in the batch last written, that its ColumnError names (-1: none or no row).");

  nb::class_<PyPipeline>(m, "Pipeline")
      .def(nb::init<const std::vector<std::vector<std::string>>&, const std::vector<nb::tuple>&,
                    const std::vector<std::vector<std::tuple<int64_t, int64_t, int64_t>>>&, int64_t, bool, uint64_t,
                    int, int, int, int64_t, const std::vector<RaggedPad>&, int, const std::vector<int64_t>&,
                    const std::string&, bool, bool, int64_t>(),
           nb::arg("chunk_files"), nb::arg("columns"), nb::arg("partitions"), nb::kw_only(), nb::arg("batch_size"),
           nb::arg("shuffle"), nb::arg("seed"), nb::arg("cycle_length"), nb::arg("num_threads"),
           nb::arg("prefetch"), nb::arg("first_epoch") = 0, nb::arg("ragged") = std::vector<RaggedPad>{},
           nb::arg("bucket_column") = -1, nb::arg("bucket_boundaries") = std::vector<int64_t>{},
           nb::arg("sparse_index_dtype") = "int64",
           nb::arg("sparse_pad") = false, nb::arg("merge_bucket_tails") = false, nb::arg("sparse_row_entries") = 0,
           "Endless shuffled, interleaved batches of the (dtype, shape[, kind]) cached columns, gathered on\n"
           "background threads; a 'sparse' column comes as (indices [n, 2], values [n], (rows, width)).\n"
           "merge_bucket_tails: with buckets, the epoch's part-filled buckets are cut into full batches.\n"
           "sparse_row_entries > 0: sparse columns come batched by row (BCOO n_batch=1), (indices [rows, k, 1],\n"
           "values [rows, k], (rows, width)) with k = sparse_row_entries, unused entries column 0, value 0.")
      .def("next", &PyPipeline::next)
      .def("stats", &PyPipeline::stats)
      .def("close", &PyPipeline::close)
      .def_prop_ro("steps_per_epoch", [](const PyPipeline& p) { return p.pipeline_.steps_per_epoch(); })
      .def_prop_ro("rows", [](const PyPipeline& p) { return p.pipeline_.rows(); })
      .def_prop_ro("epoch", [](const PyPipeline& p) { return p.pipeline_.epoch(); })
      .def_prop_ro("step", [](const PyPipeline& p) { return p.pipeline_.step(); });
}
