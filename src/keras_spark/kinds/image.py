"""Image columns: which Spark columns hold images, and the rules an image input obeys.

Two column kinds feed `keras.Input(shape=(height, width, channels))` of dtype uint8,
float32 or float64:

- a `binary` column of encoded JPEG or PNG files, as `spark.read.format("binaryFile")`
  gives (its `content` column);
- Spark's image struct, as `spark.read.format("image")` gives (its `image` column:
  origin, height, width, nChannels, mode, data; BGR bytes, converted to RGB).

The C++ core decodes them on its own threads when the cache is written (on the executors)
and when predict scores a batch; the cache keeps the decoded pixels, height*width*channels
values a row. Pixels keep their 0..255 values: put a `keras.layers.Rescaling` in the model.
`image_resize` says how an image of another size meets the input's:

- None (default): sizes must match; another size is a DataError naming the column and row.
- "resize": bilinear resize to (height, width), as `tf.image.resize`.
- "center_crop": the centred (height, width) window, as `keras.layers.CenterCrop` (an image
  smaller than that: the largest centred window of the input's aspect ratio, resized).
"""

from __future__ import annotations

from pyspark.sql import types as T

from keras_spark.errors import BindingError
from keras_spark.kinds.base import ColumnKind
from keras_spark.kinds.dense import DenseKind
from keras_spark.kinds.schema import ColumnBinding, describe_type, input_shape

IMAGE = "image"

IMAGE_RESIZE_CHOICES = (None, "resize", "center_crop")
"""tuple[str | None, ...]: the values of `image_resize` (see the module docstring)."""
IMAGE_DTYPES = ("uint8", "float32", "float64")
IMAGE_STRUCT_FIELDS = frozenset({"origin", "height", "width", "nChannels", "mode", "data"})


def is_image_type(data_type: T.DataType) -> bool:
    """A binary column (encoded JPEG/PNG) or Spark's image struct."""
    if isinstance(data_type, T.BinaryType):
        return True
    return isinstance(data_type, T.StructType) and set(data_type.fieldNames()) == IMAGE_STRUCT_FIELDS


def image_fit(image_resize: str | None) -> str:
    """The core's name for an `image_resize` choice ("exact" for None)."""
    if image_resize not in IMAGE_RESIZE_CHOICES:
        raise ValueError(f"image_resize must be one of {IMAGE_RESIZE_CHOICES}; got {image_resize!r}")
    return image_resize or "exact"


def check_image_input(column: str, spark_type: str, shape: tuple[int, ...], dtype: str) -> None:
    """An image column can feed only a fully known (height, width, 1|3|4) input of a pixel dtype."""
    if len(shape) != 3 or any(d < 1 for d in shape) or shape[2] not in (1, 3, 4):
        shown = tuple(None if d < 0 else d for d in shape)
        raise BindingError(
            f"column '{column}' holds images ({spark_type}), but Keras input '{column}' has per-row shape {shown}; "
            f"give it keras.Input(shape=(height, width, channels)) with every size known and channels 1, 3 or 4 "
            f"(pass image_resize='resize' or 'center_crop' to fit images of other sizes)"
        )
    if dtype not in IMAGE_DTYPES:
        raise BindingError(
            f"column '{column}' holds images, but Keras input '{column}' has dtype {dtype}; use one of {IMAGE_DTYPES}"
            f" (uint8 keeps the cache smallest)"
        )


class ImageKind(DenseKind):
    """An image column (encoded files or Spark's image struct) feeding a (height, width, channels) input;
    the core decodes it, and fits it as `ColumnBinding.image` says."""

    name = IMAGE

    def bind_input(self, tensor, field: T.StructField, *, image_fit: str) -> ColumnBinding | None:
        if not is_image_type(field.dataType) or str(tensor.dtype) == "string":  # binary into a string input: bytes
            return None
        name = tensor.name
        shape, dtype, spark_type = input_shape(tensor.shape), str(tensor.dtype), describe_type(field.dataType)
        check_image_input(name, spark_type, shape, dtype)
        return ColumnBinding(name, "input", name, dtype, shape, spark_type, kind=self.name, image=image_fit)

    def core_dtype(self, binding: ColumnBinding) -> str:
        """The dtype as the C++ core takes it: an image column's fit follows it (`uint8;image=resize`)."""
        return f"{binding.dtype};image={binding.image}"

    bind_label = ColumnKind.bind_label  # images are inputs only
