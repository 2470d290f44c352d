"""Ship this Python environment (keras-spark's compiled core included) to a session's executors.

    from keras_spark.deploy import ship_environment
    ship_environment(spark)          # packs sys.prefix once, then every later job runs in it

Spark's own route for packages with native code (PySpark's "Python Package Management"
guide): a packed virtual environment given to the executors as an archive, unpacked as
`./environment` beside each executor's working directory, and `./environment/bin/python` as the
workers' Python. A classic session adds the archive at run time (`SparkContext.addArchive`); a
Spark Connect session uploads it as a session artifact (`addArtifacts(..., archive=True)`); both
then set `spark.sql.execution.pyspark.python`, which DataFrame Python functions (all keras-spark
runs) honour per query.

venv-pack keeps the base interpreter as a link to its path here, so the nodes need the same Python
at the same path (an image built from the same base); conda-pack's archives carry the interpreter.
"""

from __future__ import annotations

import os
import sys
import tempfile

from keras_spark.spark import session

ENVIRONMENT_NAME = "environment"


def pack_environment(output: str | None = None, *, prefix: str | None = None, overwrite: bool = True) -> str:
    """Pack a virtual environment or conda environment into a `.tar.gz` executors can unpack.

    Args:
        output (str | None): the archive's path (default: `keras_spark_env.tar.gz` in the temporary directory).
        prefix (str | None): the environment to pack (default: the running interpreter's, `sys.prefix`).
        overwrite (bool): replace an existing archive at `output`.

    Returns:
        str: the archive's path.

    Needs `venv-pack` for a venv or `conda-pack` for a conda environment (`pip install keras-spark[deploy]`).
    """
    prefix = prefix or sys.prefix
    output = output or os.path.join(tempfile.gettempdir(), "keras_spark_env.tar.gz")
    if os.path.exists(os.path.join(prefix, "conda-meta")):
        import conda_pack

        conda_pack.pack(prefix=prefix, output=output, force=overwrite, ignore_missing_files=True)
        return output
    if not os.path.exists(os.path.join(prefix, "pyvenv.cfg")):
        raise ValueError(f"keras-spark: {prefix} is neither a virtual environment nor a conda environment; "
                         f"create one with keras-spark installed and pack it (python -m venv, pip install keras-spark)")
    import venv_pack

    venv_pack.pack(prefix=prefix, output=output, force=overwrite)
    return output


def ship_environment(spark, archive: str | None = None, *, name: str = ENVIRONMENT_NAME) -> str | None:
    """Make the session's executors run keras-spark's jobs in a packed environment.

    Args:
        spark (pyspark.sql.SparkSession): a classic session whose master is a cluster (`local-cluster`,
            standalone, YARN, Kubernetes) or a Spark Connect session.
        archive (str | None): a `.tar.gz`/`.zip` made by `pack_environment`, venv-pack or conda-pack
            (default: `pack_environment()` of this interpreter's environment).
        name (str): the directory the archive unpacks into on each executor.

    Returns:
        str | None: the workers' Python path set (`./<name>/bin/python`), or None on a local master, whose workers
        already run on this machine (keras-spark gives them the driver's interpreter) and need nothing shipped.
    """
    if not session.is_connect(spark) and _is_local(spark):
        return None
    archive = archive or pack_environment()
    python = f"./{name}/bin/python"
    if session.is_connect(spark):
        spark.addArtifacts(f"{os.path.abspath(archive)}#{name}", archive=True)
    else:
        spark.sparkContext.addArchive(f"{os.path.abspath(archive)}#{name}")
    spark.conf.set("spark.sql.execution.pyspark.python", python)
    return python


def _is_local(spark) -> bool:
    from keras_spark.spark.executors import _is_local_master

    return _is_local_master(spark.conf.get("spark.master", None) or "")
