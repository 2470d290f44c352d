"""The README's quickstart: a model learns y = 2x + 1 from a Spark DataFrame and prints its predictions.

    python examples/quickstart.py

tests/test_examples.py checks that README.md's quickstart block is this file's code, and runs it.
"""

# --8<-- [start:quickstart]
from keras_spark.models import KerasSparkModel  # first: Keras then starts without TensorFlow's C++ log lines
import keras
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

spark = (SparkSession.builder.master("local[2]")
         .config("spark.ui.showConsoleProgress", "false")  # no Spark progress bar over Keras's
         .getOrCreate())

# 2,000 rows of y = 2x + 1. There is no partition_id column: fit makes one.
df = (spark.range(2000)
      .select((F.rand(seed=0) * 2 - 1).cast("float").alias("x"))
      .withColumn("y", 2 * F.col("x") + 1))

x = keras.Input(shape=(1,), name="x")   # fed from the column "x"
y = keras.layers.Dense(1, name="y")(x)  # trained against the column "y"
model = KerasSparkModel(x, y)
model.compile(keras.optimizers.Adam(0.1), "mean_squared_error")
model.fit(df, batch_size=32, epochs=5, verbose=2)

weight, bias = (float(v.reshape(-1)[0]) for v in model.get_weights())
print(f"learned y = {weight:.3f} x + {bias:.3f}")
predictions = model.predict(df.limit(5))  # scored on the Spark executors
predictions.select("x", "y", F.col("model_output.y").alias("predicted")).show()
# --8<-- [end:quickstart]
