#include "image_decode.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// Only the two formats we promise; a cap on dimensions so a forged header cannot ask for gigabytes.
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_MAX_DIMENSIONS (1 << 15)
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include "stb_image.h"

namespace keras_spark {
namespace {

std::string at_row(int64_t row) { return " at row " + std::to_string(row); }

// stb_image's reason for this thread's last failure, printable (a PNG chunk's name is raw file bytes).
std::string failure_reason() {
  const char* reason = stbi_failure_reason();
  std::string out = reason ? reason : "unknown";
  for (char& ch : out)
    if (ch < 32 || ch > 126) ch = '?';
  return out;
}

// A binary (int32 offsets, "z") or large binary (int64 offsets, "Z") array, entry i at physical first + i.
struct BinaryValues {
  const uint8_t* validity = nullptr;
  const void* offsets = nullptr;
  const uint8_t* data = nullptr;
  bool large = false;
  int64_t first = 0;

  static bool is_binary(const ArrowSchema& s) {
    return s.format && (std::strcmp(s.format, "z") == 0 || std::strcmp(s.format, "Z") == 0);
  }

  BinaryValues(const ArrowSchema& s, const ArrowArray& a, int64_t physical_first, const std::string& column) {
    if (a.n_buffers != 3 || !a.buffers || (a.length > 0 && !a.buffers[1]))
      throw ColumnError("column '" + column + "' is a malformed Arrow binary array (expected 3 buffers)");
    validity = a.null_count != 0 ? static_cast<const uint8_t*>(a.buffers[0]) : nullptr;
    offsets = a.buffers[1];
    data = static_cast<const uint8_t*>(a.buffers[2]);
    large = s.format[0] == 'Z';
    first = physical_first;
  }

  bool valid(int64_t i) const {
    const int64_t p = first + i;
    return !validity || ((validity[p >> 3] >> (p & 7)) & 1);
  }
  int64_t offset(int64_t p) const {
    return large ? static_cast<const int64_t*>(offsets)[p] : static_cast<const int32_t*>(offsets)[p];
  }
  // The bytes of entry i; false when its offsets are not a range (a malformed array).
  bool bytes(int64_t i, const uint8_t*& begin, int64_t& size) const {
    const int64_t lo = offset(first + i), hi = offset(first + i + 1);
    if (lo < 0 || hi < lo || (hi > lo && !data)) return false;
    begin = data + lo;
    size = hi - lo;
    return true;
  }
};

const char* kImageFields[] = {"origin", "height", "width", "nChannels", "mode", "data"};
enum ImageField { kOrigin, kHeight, kWidth, kChannels, kMode, kData };

// Children of Spark's image struct by field, or false when `s` is not that struct.
bool image_struct_fields(const ArrowSchema& s, const ArrowArray& a, int order[6]) {
  if (!s.format || std::strcmp(s.format, "+s") != 0 || s.n_children != 6 || a.n_children != 6 || !s.children ||
      !a.children)
    return false;
  std::fill(order, order + 6, -1);
  for (int64_t i = 0; i < 6; ++i)
    for (int k = 0; k < 6; ++k)
      if (s.children[i] && a.children[i] && s.children[i]->name && std::strcmp(s.children[i]->name, kImageFields[k]) == 0)
        order[k] = static_cast<int>(i);
  for (int k = 0; k < 6; ++k)
    if (order[k] < 0) return false;
  return BinaryValues::is_binary(*s.children[order[kData]]);
}

// Pixels (rows x cols x channels, uint8) and the window of them that becomes the output.
struct Pixels {
  const uint8_t* data;
  int64_t height, width, channels;
};
struct Window {
  int64_t top, left, height, width;
};

Window fit_window(const Pixels& src, const ColumnTarget& t, int64_t row) {
  const int64_t h = t.shape[0], w = t.shape[1];
  switch (t.image) {
    case ImageFit::Resize:
      return {0, 0, src.height, src.width};
    case ImageFit::CenterCrop: {
      if (src.height >= h && src.width >= w) return {(src.height - h) / 2, (src.width - w) / 2, h, w};
      // Smaller than the target: the largest centred window of its aspect ratio (keras smart_resize).
      const int64_t ch = std::max<int64_t>(1, std::min(src.height, src.width * h / w));
      const int64_t cw = std::max<int64_t>(1, std::min(src.width, src.height * w / h));
      return {(src.height - ch) / 2, (src.width - cw) / 2, ch, cw};
    }
    default:
      if (src.height != h || src.width != w)
        throw ColumnError("column '" + t.name + "' has an image of " + std::to_string(src.height) + "x" +
                              std::to_string(src.width) + " pixels (height x width)" + at_row(row) +
                              ", but the Keras input takes " + std::to_string(h) + "x" + std::to_string(w) +
                              " (per-row shape " + t.shape_text() + "); pass image_resize='resize' or "
                              "'center_crop' to fit every image to the input, or give the input that size",
                          row);
      return {0, 0, h, w};
  }
}

// One axis of a bilinear resize with half-pixel centres, as tf.image.resize(method="bilinear").
struct Tap {
  int64_t lo, hi;
  float frac;
};

std::vector<Tap> taps(int64_t in_size, int64_t in_start, int64_t out_size) {
  std::vector<Tap> out(static_cast<size_t>(out_size));
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  for (int64_t o = 0; o < out_size; ++o) {
    const double x = (static_cast<double>(o) + 0.5) * scale - 0.5;
    const double f = std::floor(x);
    const int64_t lo = std::max<int64_t>(static_cast<int64_t>(f), 0);
    const int64_t hi = std::min<int64_t>(static_cast<int64_t>(std::ceil(x)), in_size - 1);
    out[static_cast<size_t>(o)] = {in_start + lo, in_start + hi, static_cast<float>(x - f)};
  }
  return out;
}

template <typename T>
T pixel_value(float v) {
  if constexpr (std::is_same_v<T, uint8_t>) return static_cast<uint8_t>(std::clamp(v + 0.5f, 0.0f, 255.0f));
  else return static_cast<T>(v);
}

template <typename T>
void fit_pixels(const Pixels& src, const Window& win, int64_t h, int64_t w, T* dst) {
  const int64_t c = src.channels, stride = src.width * c;
  if (win.height == h && win.width == w) {  // a copy (exact size or a plain crop)
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t* line = src.data + (win.top + y) * stride + win.left * c;
      for (int64_t i = 0; i < w * c; ++i) dst[y * w * c + i] = static_cast<T>(line[i]);
    }
    return;
  }
  const std::vector<Tap> ys = taps(win.height, win.top, h), xs = taps(win.width, win.left, w);
  for (int64_t y = 0; y < h; ++y) {
    const Tap& ty = ys[static_cast<size_t>(y)];
    const uint8_t *top = src.data + ty.lo * stride, *bottom = src.data + ty.hi * stride;
    for (int64_t x = 0; x < w; ++x) {
      const Tap& tx = xs[static_cast<size_t>(x)];
      for (int64_t k = 0; k < c; ++k) {
        const float tl = top[tx.lo * c + k], tr = top[tx.hi * c + k];
        const float bl = bottom[tx.lo * c + k], br = bottom[tx.hi * c + k];
        const float t = tl + (tr - tl) * tx.frac, b = bl + (br - bl) * tx.frac;
        dst[(y * w + x) * c + k] = pixel_value<T>(t + (b - t) * ty.frac);
      }
    }
  }
}

void write_pixels(const Pixels& src, const ColumnTarget& t, int64_t row, uint8_t* out) {
  const Window win = fit_window(src, t, row);
  const int64_t h = t.shape[0], w = t.shape[1];
  switch (t.dtype) {
    case DType::UInt8: return fit_pixels(src, win, h, w, out);
    case DType::Float32: return fit_pixels(src, win, h, w, reinterpret_cast<float*>(out));
    case DType::Float64: return fit_pixels(src, win, h, w, reinterpret_cast<double*>(out));
    default: throw ColumnError("column '" + t.name + "': internal: image dtype " + dtype_name(t.dtype));
  }
}

[[noreturn]] void null_image(const std::string& column, int64_t row) {
  throw ColumnError("column '" + column + "' has a null image" + at_row(row) +
                        "; drop such rows in Spark first (df.dropna(subset=['" + column + "']))",
                    row);
}

// Decodes the rows of one image column; one instance per thread (its scratch buffer).
class ImageRows {
 public:
  ImageRows(const ArrowView& column, const ColumnTarget& target) : column_(column), t_(target) {
    const ArrowSchema& s = column.schema();
    const ArrowArray& a = column.array();
    if (BinaryValues::is_binary(s)) {
      encoded_ = std::make_unique<BinaryValues>(s, a, column.physical(0), t_.name);
      return;
    }
    int order[6];
    image_struct_fields(s, a, order);
    for (int k = kHeight; k <= kMode; ++k)
      fields_.emplace_back(*s.children[order[k]], *a.children[order[k]], column.physical(0), column.length(),
                           t_.name);
    for (const ArrowView& f : fields_)
      if (f.kind() != ArrowKind::Number || f.number_format() == 'f' || f.number_format() == 'g')
        throw ColumnError("column '" + t_.name + "': the image struct's height, width, nChannels and mode must be "
                          "integers");
    data_ = std::make_unique<BinaryValues>(*s.children[order[kData]], *a.children[order[kData]],
                                           column.physical(0), t_.name);
  }

  void decode(int64_t i, uint8_t* out) {
    if (!column_.valid(i)) null_image(t_.name, i);
    if (encoded_) return decode_encoded(i, out);
    decode_struct(i, out);
  }

 private:
  void decode_encoded(int64_t i, uint8_t* out) {
    const uint8_t* bytes = nullptr;
    int64_t size = 0;
    if (!encoded_->valid(i)) null_image(t_.name, i);
    if (!encoded_->bytes(i, bytes, size)) throw ColumnError("column '" + t_.name + "': malformed offsets" + at_row(i), i);
    int width = 0, height = 0, found_channels = 0;
    const int channels = static_cast<int>(t_.shape[2]);
    std::unique_ptr<uint8_t, void (*)(void*)> pixels(
        size > 0 && size <= INT32_MAX
            ? stbi_load_from_memory(bytes, static_cast<int>(size), &width, &height, &found_channels, channels)
            : nullptr,
        stbi_image_free);
    if (!pixels)
      throw ColumnError("column '" + t_.name + "' has an image" + at_row(i) + " that cannot be decoded as JPEG or "
                            "PNG (" + std::to_string(size) + " bytes; decoder: " +
                            (size > 0 ? failure_reason() : "empty") +
                            "); remove or repair it, e.g. filter such rows out in Spark",
                        i);
    write_pixels({pixels.get(), height, width, channels}, t_, i, out);
  }

  void decode_struct(int64_t i, uint8_t* out) {
    for (const ArrowView& f : fields_)
      if (!f.valid(i)) null_image(t_.name, i);
    if (!data_->valid(i)) null_image(t_.name, i);
    const int64_t height = fields_[0].integer(i), width = fields_[1].integer(i);
    const int64_t found = fields_[2].integer(i), mode = fields_[3].integer(i);
    const uint8_t* bytes = nullptr;
    int64_t size = 0;
    if (!data_->bytes(i, bytes, size)) throw ColumnError("column '" + t_.name + "': malformed offsets" + at_row(i), i);
    // Spark's image source writes OpenCV's CV_8UC1 (0), CV_8UC3 (16) and CV_8UC4 (24).
    const bool mode_ok = (mode == 0 && found == 1) || (mode == 16 && found == 3) || (mode == 24 && found == 4);
    int64_t expected = 0;
    if (!mode_ok || height <= 0 || width <= 0 || __builtin_mul_overflow(height * width, found, &expected) ||
        height > (1 << 15) || width > (1 << 15) || expected != size)
      throw ColumnError("column '" + t_.name + "' has an image struct" + at_row(i) + " that Spark's image source "
                            "would not write (height " + std::to_string(height) + ", width " + std::to_string(width) +
                            ", nChannels " + std::to_string(found) + ", mode " + std::to_string(mode) + ", " +
                            std::to_string(size) + " data bytes); expected 8-bit modes 0, 16 or 24 with "
                            "height*width*nChannels bytes",
                        i);
    const int64_t channels = t_.shape[2];
    rgb_.resize(static_cast<size_t>(height * width * channels));
    to_rgb(bytes, height * width, found, channels, rgb_.data());
    write_pixels({rgb_.data(), height, width, channels}, t_, i, out);
  }

  // BGR(A) or grey pixels to the target's grey, RGB or RGBA (stb_image's grey weights).
  static void to_rgb(const uint8_t* src, int64_t pixels, int64_t from, int64_t to, uint8_t* dst) {
    for (int64_t p = 0; p < pixels; ++p, src += from, dst += to) {
      const uint8_t b = src[0], g = from == 1 ? src[0] : src[1], r = from == 1 ? src[0] : src[2];
      const uint8_t a = from == 4 ? src[3] : 255;
      if (to == 1) {
        dst[0] = static_cast<uint8_t>((r * 77 + g * 150 + b * 29) >> 8);
        continue;
      }
      dst[0] = r, dst[1] = g, dst[2] = b;
      if (to == 4) dst[3] = a;
    }
  }

  const ArrowView& column_;
  const ColumnTarget& t_;
  std::unique_ptr<BinaryValues> encoded_, data_;
  std::vector<ArrowView> fields_;  // height, width, nChannels, mode
  std::vector<uint8_t> rgb_;
};

}  // namespace

int image_decode_threads() {
  if (const char* env = std::getenv("KERAS_SPARK_DECODE_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void check_image_target(const ArrowView& column, const ColumnTarget& t) {
  int order[6];
  if (!BinaryValues::is_binary(column.schema()) && !image_struct_fields(column.schema(), column.array(), order))
    throw ColumnError("column '" + t.name + "' has Arrow type " + describe_arrow_type(column.schema()) +
                      "; an image input takes a binary column of JPEG or PNG bytes "
                      "(spark.read.format('binaryFile')) or Spark's image struct (spark.read.format('image'))");
  const bool shape_ok = t.shape.size() == 3 && t.shape[0] > 0 && t.shape[1] > 0 && t.shape[0] <= (1 << 15) &&
                        t.shape[1] <= (1 << 15) && (t.shape[2] == 1 || t.shape[2] == 3 || t.shape[2] == 4);
  if (!shape_ok)
    throw ColumnError("column '" + t.name + "' holds images, but the Keras input's per-row shape is " +
                      t.shape_text() + "; give it (height, width, channels) with channels 1, 3 or 4");
  if (t.dtype != DType::UInt8 && t.dtype != DType::Float32 && t.dtype != DType::Float64)
    throw ColumnError("column '" + t.name + "' holds images, but the Keras input's dtype is " + dtype_name(t.dtype) +
                      "; use uint8 (smallest cache), float32 or float64");
}

void convert_image_rows(const ArrowView& column, int64_t begin, int64_t end, const ColumnTarget& target,
                        uint8_t* out) {
  check_image_target(column, target);
  if (end <= begin) return;
  const size_t row_bytes = target.row_bytes();
  const int64_t threads = std::min<int64_t>(image_decode_threads(), end - begin);
  std::atomic<int64_t> next{begin};
  std::atomic<int64_t> failed_row{end};  // the first bad row found so far; rows past it need no decoding
  std::mutex error_mutex;
  std::string error;

  auto work = [&]() {
    try {
      ImageRows rows(column, target);
      for (int64_t i = next++; i < end && i < failed_row.load(); i = next++) {
        try {
          rows.decode(i, out + static_cast<size_t>(i - begin) * row_bytes);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (i < failed_row.load()) {
            failed_row = i;
            error = e.what();
          }
        }
      }
    } catch (const std::exception& e) {  // the column itself is bad: report it as its first row
      std::lock_guard<std::mutex> lock(error_mutex);
      failed_row = -1;
      error = e.what();
    }
  };
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < threads; ++k) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (!error.empty()) throw ColumnError(error, failed_row.load());
}

}  // namespace keras_spark
