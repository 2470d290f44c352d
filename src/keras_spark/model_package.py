"""The model package: what travels to Spark executors and training workers, as plain bytes.

    package = pack_model(model, custom_objects)   # on the driver, once per predict/fit
    model = open_model(package)                    # in a Python worker, once (callers cache it)

A package holds the `.keras` bytes (architecture, weights, compile config, optimizer
state), the backend it was made under, and the custom objects the model needs,
pickled with cloudpickle as Spark pickles UDFs: by reference when they live in an
installed package the executors can import, by value when they live in `__main__`
or in a file outside any installed package (a script, a notebook helper, a test
module). It is plain bytes, so how it travels (a broadcast, an artifact, a closure)
is the caller's choice. `open_model` loads inside a `custom_object_scope` added to any
active one, with Keras's `safe_mode` left on.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import sysconfig

from keras_spark import scratch
from keras_spark.errors import ModelPackageError

_FORMAT = "keras-spark model package 1"


def model_to_bytes(model) -> bytes:
    """The model as .keras bytes: architecture, weights, compile config and optimizer state."""
    with scratch.scratch_dir("model_", guard=False) as tmp:  # owned: swept if this process dies
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def custom_objects_for(model_bytes: bytes, explicit: dict | None = None) -> dict:
    """The registered custom objects the model's files name, plus every explicit one.

    Registered objects appear in the saved config under their registered name
    ("package>Name"); those the model never names are left behind, so an unrelated
    registration (another library's, or an unpicklable one) costs nothing.
    """
    import keras

    known = {**keras.saving.get_custom_objects(), **scoped_custom_objects()}
    named = {key: obj for key, obj in named_in(model_bytes, known).items() if not _is_keras_spark(obj)}
    return {**named, **dict(explicit or {})}


def named_in(model_bytes: bytes, objects: dict) -> dict:
    """Those of `objects` whose name the model's saved config holds (a class, function or registered name)."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
        config = archive.read("config.json").decode("utf-8")
    return {key: obj for key, obj in objects.items() if f'"{key}"' in config}


def scoped_custom_objects() -> dict:
    """The objects of the active `keras.saving.custom_object_scope` (this thread's; {} outside one).

    Keras keeps them in its per-thread global state and has no public getter for them.
    """
    from keras.src.backend.common import global_state

    return dict(global_state.get_global_attribute("custom_objects_scope_dict", {}) or {})


@contextlib.contextmanager
def custom_object_scope(objects: dict | None):
    """`keras.saving.custom_object_scope` with `objects` added to the active scope's, not in place of
    them (Keras's own scope replaces the one around it); `objects` win where both name a key."""
    import keras

    with keras.saving.custom_object_scope({**scoped_custom_objects(), **dict(objects or {})}):
        yield


EXECUTORS_CANNOT_LOAD = "the Spark executors could not load the model"
PASS_CUSTOM_OBJECTS = "pass custom_objects={example} (to predict or fit)"


def check_classes_resolve(model_bytes: bytes, objects: dict, *, consequence: str = EXECUTORS_CANNOT_LOAD,
                          remedy: str = PASS_CUSTOM_OBJECTS) -> None:
    """ModelPackageError naming each class of the model that a process given only `objects` (and Keras's
    registry) could not find, as an executor could not: the driver says so before any Spark job.

    `consequence` says what fails for want of the class; `remedy` ({example}: the missing classes as a
    dict literal) how to give it, so a Spark ML stage can name its `customObjects` Param instead.
    """
    import io
    import json
    import zipfile

    import keras

    with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
        config = json.loads(archive.read("config.json"))
    config.pop("compile_config", None)  # scoring loads without it; a fit's compile is the user's to check
    lookup = _keras_class_lookup()
    if lookup is None:  # another Keras: the executors' own load reports it, as before this check
        return
    with keras.saving.custom_object_scope(objects):  # the executor's scope: the user's is not there
        missing = sorted(set(_unresolved(config, objects, lookup)))
    if missing:
        names = ", ".join(f"'{name}' ({module}.{name})" for name, module in missing)
        example = ", ".join(f"'{name}': {name}" for name, _ in missing)
        raise ModelPackageError(
            f"the model uses class{'es' if len(missing) > 1 else ''} {names}, which Keras cannot find by name, so "
            f"{consequence}; {remedy.format(example='{' + example + '}')}, or decorate the class with "
            f"@keras.saving.register_keras_serializable()"
        )


_LOOKUP_PARAMETERS = ["name", "registered_name", "module", "obj_type", "full_config", "custom_objects"]


def _keras_class_lookup():
    """Keras's own class lookup (what load_model uses), or None where this Keras has another one.

    It is private to Keras, so its signature is checked first: a changed one must not make every
    model look unloadable.
    """
    import inspect

    try:
        from keras.src.saving.serialization_lib import _retrieve_class_or_fn
    except ImportError:
        return None
    parameters = list(inspect.signature(_retrieve_class_or_fn).parameters)
    return _retrieve_class_or_fn if parameters == _LOOKUP_PARAMETERS else None


def _unresolved(node, objects: dict, lookup):
    """(class name, module) of every class or function config in `node` that Keras cannot look up."""
    if isinstance(node, list):
        for item in node:
            yield from _unresolved(item, objects, lookup)
        return
    if not isinstance(node, dict):
        return
    name, inner = node.get("class_name"), node.get("config")
    if isinstance(name, str) and "module" in node and not name.startswith("__"):
        function = name == "function"
        if not function or isinstance(inner, str):
            try:
                lookup(inner if function else name, node.get("registered_name", name),
                       node["module"], "function" if function else "class", node, objects)
            except (TypeError, ValueError):
                yield (inner if function else name), node["module"]
    for value in node.values():
        yield from _unresolved(value, objects, lookup)


def _is_keras_spark(obj) -> bool:
    return (getattr(obj, "__module__", "") or "").split(".")[0] == "keras_spark"


def _installed_roots() -> list[str]:
    paths = sysconfig.get_paths()
    return [os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]


def _ships_by_value(module_name: str | None) -> bool:
    """True for the user's own code, which the executors may not be able to import: a module whose file is
    outside the standard library and site-packages (a script's helper, a notebook's, a test module).
    keras_spark itself is checked on the executors (spark/executors.py), never shipped."""
    if not module_name or module_name == "__main__" or module_name.split(".")[0] == "keras_spark":
        return False  # cloudpickle already pickles __main__ by value
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        return False
    path = os.path.realpath(path)
    return not any(path.startswith(root + os.sep) for root in _installed_roots())


def _users_code(module_name: str | None) -> bool:
    """Code whose classes and functions are walked for what they reference: __main__ and _ships_by_value."""
    return module_name == "__main__" or _ships_by_value(module_name)


def _referenced(obj) -> list:
    """What a function of the user's refers to by global name or closure, or a class of the user's holds
    (its bases, methods, properties)."""
    import types

    if isinstance(obj, type):
        return [*obj.__bases__, *vars(obj).values()]
    if isinstance(obj, (staticmethod, classmethod)):
        return [obj.__func__]
    if isinstance(obj, property):
        return [obj.fget, obj.fset, obj.fdel]
    if not isinstance(obj, types.FunctionType):
        return []
    names, codes = set(), [obj.__code__]
    while codes:  # nested functions, comprehensions and lambdas have code objects of their own
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    cells = [cell.cell_contents for cell in obj.__closure__ or () if _filled(cell)]
    return [obj.__globals__[n] for n in sorted(names) if n in obj.__globals__] + cells


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # a cell not yet assigned
        return False
    return True


def modules_to_ship(objects: dict) -> set[str]:
    """The user's own modules that the custom objects need on the executors: their own modules, their
    bases' modules and those of the functions, classes and modules their code refers to, followed
    through the user's code (never into installed packages, which go by reference)."""
    import types

    modules, seen, todo = set(), set(), list(objects.values())
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            if _ships_by_value(obj.__name__):
                modules.add(obj.__name__)
                todo.extend(v for v in vars(obj).values() if getattr(v, "__module__", None) == obj.__name__)
            continue
        if isinstance(obj, (staticmethod, classmethod, property)):  # found in a class of the user's
            todo.extend(_referenced(obj))
        elif isinstance(obj, (type, types.FunctionType)) and _users_code(obj.__module__):
            if obj.__module__ != "__main__":
                modules.add(obj.__module__)
            todo.extend(_referenced(obj))
    return modules


def _check_shippable(modules: set[str]) -> None:
    """ModelPackageError for a module cloudpickle cannot carry by value (a compiled extension) unless its folder
    is on PYTHONPATH (taken to be the executors' too): the message says how to put it on the executors."""
    import importlib.machinery

    on_path = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    for name in sorted(modules):
        path = getattr(sys.modules[name], "__file__", "") or ""
        compiled = path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        if compiled and os.path.dirname(os.path.realpath(path)) not in on_path:
            raise ModelPackageError(
                f"the custom objects need module '{name}' ({path}), a compiled extension outside any installed "
                f"package: it cannot travel with the model, and the Spark executors may not import it. Install it "
                f"on every executor (a wheel, or keras_spark.deploy.ship_environment), ship its file with "
                f"spark.sparkContext.addPyFile('{path}') (on Spark Connect, spark.addArtifacts(<file>, pyfile=True) "
                f"takes .py, .zip and .egg files), or, where every executor has it already, put its folder on "
                f"PYTHONPATH"
            )


@contextlib.contextmanager
def _by_value(modules: set[str]):
    """Registers `modules` with cloudpickle for pickling by value, for the duration only."""
    from pyspark import cloudpickle

    added = [sys.modules[m] for m in sorted(modules) if m not in cloudpickle.list_registry_pickle_by_value()]
    for module in added:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)


def pickle_custom_objects(objects: dict) -> bytes:
    """The custom objects as cloudpickle bytes, the user's own modules they need carried by value
    (modules_to_ship); ModelPackageError names an object or module that cannot travel."""
    from pyspark import cloudpickle

    modules = modules_to_ship(objects)
    _check_shippable(modules)
    with _by_value(modules):
        for key, obj in objects.items():
            try:
                cloudpickle.dumps(obj)
            except Exception as error:
                raise ModelPackageError(
                    f"custom object '{key}' ({getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)!s}) "
                    f"cannot be shipped to the Spark executors: {type(error).__name__}: {error}. Define it at module "
                    f"level without references to open files, locks or sessions, or install the module that "
                    f"defines it on the executors"
                ) from error
        return cloudpickle.dumps(objects)


def pack_model(model, custom_objects: dict | None = None) -> bytes:
    """Driver side: the model and the custom objects it needs, as one bytes value."""
    import keras

    model_bytes = model_to_bytes(model)
    objects = custom_objects_for(model_bytes, custom_objects)
    check_classes_resolve(model_bytes, objects)
    return pickle.dumps({
        "format": _FORMAT,
        "backend": keras.backend.backend(),
        "keras": model_bytes,
        "custom_objects": pickle_custom_objects(objects),
        "custom_object_names": sorted(objects),
    })


def read_package(package: bytes) -> dict:
    """The package's parts: `keras` (bytes), `backend`, `custom_objects` (pickled), `custom_object_names`."""
    parts = pickle.loads(package)
    if not isinstance(parts, dict) or parts.get("format") != _FORMAT:
        raise ModelPackageError("not a keras-spark model package (made by a different keras-spark version?)")
    return parts


def _register(objects: dict) -> None:
    """Later deserialization in this process (the compile config, a checkpoint) finds them too."""
    import keras

    for key, obj in objects.items():
        if ">" in key and hasattr(obj, "get_config"):
            package, name = key.split(">", 1)
            keras.saving.register_keras_serializable(package=package, name=name)(obj)
        else:
            keras.saving.get_custom_objects()[key] = obj


def open_model(package: bytes, **load_kwargs):
    """Worker side: the model, its custom objects unpickled and in scope (sets KERAS_BACKEND if unset)."""
    parts = read_package(package)
    os.environ.setdefault("KERAS_BACKEND", parts["backend"])
    from pyspark import cloudpickle

    objects = cloudpickle.loads(parts["custom_objects"])
    _register(objects)
    return model_from_bytes(parts["keras"], custom_objects=objects, **load_kwargs)


def model_from_bytes(model_bytes: bytes, custom_objects: dict | None = None, **load_kwargs):
    """.keras bytes -> the model (imports Keras: set KERAS_BACKEND first)."""
    import keras

    # No import of keras_spark.models here (that would be an import circle): packages hold
    # functional models (KerasSparkModel.save), which plain Keras loads.
    with scratch.scratch_dir("model_", guard=False) as tmp:  # owned: swept if this process dies
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(model_bytes)
        with custom_object_scope(custom_objects):
            return keras.models.load_model(path, **load_kwargs)
