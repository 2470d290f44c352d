// Image columns: encoded JPEG/PNG bytes (a binary column, as spark.read.format("binaryFile")
// gives) or Spark's image struct (spark.read.format("image"): origin, height, width,
// nChannels, mode, data; BGR(A) bytes, OpenCV modes) become dense (h, w, c) pixel tensors.
//
// Decoding runs on the core's own threads (stb_image, vendored in third_party/stb), rows split
// across them; each image is fitted to (h, w) as the target's ImageFit says:
//   Exact       sizes must match, else ColumnError
//   Resize      bilinear resize to (h, w) (half-pixel centres, as tf.image.resize)
//   CenterCrop  the largest centred window of the target's aspect ratio, resized to (h, w)
// Channels follow c: 1 grey, 3 RGB, 4 RGBA (converted as needed). Values stay 0..255, cast
// to the target dtype (uint8, float32 or float64); scaling belongs in the model (Rescaling).
#pragma once

#include <cstdint>

#include "columns.h"

namespace keras_spark {

// Checks that `column` is an image column and `target` a shape and dtype images can fill.
void check_image_target(const ArrowView& column, const ColumnTarget& target);

// Rows [begin, end) of an image column decoded into `out` (target.bytes_for(end - begin) bytes).
// Throws ColumnError naming the column and the first bad row (corrupt data, a size mismatch).
void convert_image_rows(const ArrowView& column, int64_t begin, int64_t end, const ColumnTarget& target,
                        uint8_t* out);

// Threads that decode one call's rows: KERAS_SPARK_DECODE_THREADS, else the machine's cores.
int image_decode_threads();

}  // namespace keras_spark
