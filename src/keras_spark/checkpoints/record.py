"""What a checkpoint holds, as one typed record, and the fingerprint of the run it belongs to.

The state is every variable's raw bytes, never a Keras file: the model's variables (weights and the
seed generators' states), the optimizer's (its iteration count, learning rate and slots), the
metrics', and the backend's global RNG state where a step draws from it (PyTorch). Raw values restore
bit for bit under every backend and need no TensorFlow to write or read, wherever the bytes go. The
fingerprint (model, data, fit arguments) is kept readable, not only hashed, so that a refusal can name
what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np

from keras_spark.errors import CheckpointMismatchError

STATE_FILE = "state.bin"
RECORD_FILE = "record.json"
GROUPS = ("model", "optimizer", "metrics")  # variables; "backend_rng" entries are the backend's global RNG


@dataclasses.dataclass
class CheckpointRecord:
    """A run's position and what it has learned so far (the JSON beside the variables' bytes).

    `epoch` is the next epoch to train (epochs done), `step` the next step in it (0 at an epoch's
    boundary); `history` maps each History key to one value per epoch done; `shuffle_seed` and
    `interleave` (partition ids read at once) are the feed's, so that a resumed run serves each epoch
    in the order the first run would have, on a driver with another number of cores too.
    """

    epoch: int
    step: int
    history: dict[str, list]
    shuffle_seed: int
    interleave: int
    variables: list[dict] = dataclasses.field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CheckpointRecord:
        return cls(**json.loads(data))


def _variables(model) -> dict[str, list]:
    optimizer = getattr(model, "optimizer", None)
    return {"model": list(model.variables), "optimizer": list(optimizer.variables) if optimizer else [],
            "metrics": list(model.metrics_variables)}


def _as_numpy(variable) -> np.ndarray:
    import keras

    return np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value))


def _backend_rng_states() -> dict[str, np.ndarray]:
    """The backend's global RNG states that a training step can draw from.

    PyTorch's: Keras's unseeded `Dropout` (and other `seed=None` layers) draw from torch's global
    generator there, not from their SeedGenerator. TensorFlow and JAX draw only from seed generators,
    which are model variables.
    """
    import keras

    if keras.backend.backend() != "torch":
        return {}
    import torch

    states = {"torch.cpu": torch.get_rng_state().numpy()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"torch.cuda:{i}": s.numpy() for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _set_backend_rng_state(path: str, value: np.ndarray) -> None:
    import torch

    if path == "torch.cpu":
        torch.set_rng_state(torch.from_numpy(value.copy()))
    elif path.startswith("torch.cuda:") and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(value.copy()), int(path.split(":")[1]))


def snapshot(model) -> tuple[list[dict], bytes]:
    """(index of every variable, their bytes end to end): a copy in host memory of the model's state."""
    arrays = [(group, variable.path, _as_numpy(variable).reshape(tuple(variable.shape)))
              for group, variables in _variables(model).items() for variable in variables]
    # (The declared shape: a JAX fit can leave a scalar, the optimizer's iteration, as shape (1,).)
    arrays += [("backend_rng", path, state) for path, state in _backend_rng_states().items()]
    index, chunks, offset = [], [], 0
    for group, path, array in arrays:
        data = array.tobytes()
        index.append({"group": group, "path": path, "dtype": str(array.dtype), "shape": list(array.shape),
                      "offset": offset, "bytes": len(data)})
        chunks.append(data)
        offset += len(data)
    return index, b"".join(chunks)


def restore(model, index: list[dict], state: bytes):
    """Assign every variable its checkpointed value (the optimizer built first if fit has not yet built it).

    Returns a function that sets the backend's global RNG state: call it right before the first
    training step, so that what Keras draws while it sets fit up (torch's DataLoader draws a seed) is
    drawn before, as in the run that never stopped.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    current = _variables(model)
    for group in GROUPS:
        saved = [entry for entry in index if entry["group"] == group]
        if group == "metrics" and len(saved) != len(current[group]):
            continue  # metrics are built by fit's first step; at an epoch's boundary they are reset anyway
        if len(saved) != len(current[group]):
            raise CheckpointMismatchError(
                f"keras-spark: the checkpoint has {len(saved)} {group} variables and this model has "
                f"{len(current[group])}; it was written by another model or optimizer")
        for entry, variable in zip(saved, current[group], strict=True):
            dtype = _as_numpy(variable).dtype
            if str(dtype) != entry["dtype"] or tuple(variable.shape) != tuple(entry["shape"]):
                raise CheckpointMismatchError(
                    f"keras-spark: checkpoint variable {entry['path']} is {entry['dtype']}{tuple(entry['shape'])}; "
                    f"this model's {variable.path} is {dtype}{tuple(variable.shape)}")
            chunk = state[entry["offset"]:entry["offset"] + entry["bytes"]]
            variable.assign(np.frombuffer(chunk, dtype=dtype).reshape(entry["shape"]))
    rng = [(e["path"], np.frombuffer(state[e["offset"]:e["offset"] + e["bytes"]], dtype=e["dtype"]).reshape(e["shape"]))
           for e in index if e["group"] == "backend_rng"]  # a checkpoint of another backend has none of this one's

    def set_backend_rng() -> None:
        for path, value in rng:
            _set_backend_rng_state(path, value)

    return set_backend_rng


# -- fingerprints ----------------------------------------------------------------------
def _plain(value):
    """A JSON-able stand-in for a config value (objects by their type, never by an address)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return type(value).__name__


def _layer(layer) -> str:
    try:
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
    except Exception:  # a custom layer without get_config: its class says what it can
        config = {}
    digest = hashlib.sha256(json.dumps(_plain(config), sort_keys=True).encode()).hexdigest()[:12]
    return f"{type(layer).__name__} {digest}"


def model_fingerprint(model) -> dict:
    """The model's architecture and training setup, blind to the names Keras makes up (dense_3)."""
    optimizer = getattr(model, "optimizer", None)
    optimizer_config = {}
    if optimizer is not None:
        optimizer_config = {k: v for k, v in _plain(optimizer.get_config()).items() if k != "name"}
    loss = getattr(model, "loss", None)
    return {
        "inputs": [t.name for t in model.inputs],
        "outputs": list(model.output_names),
        "layers": [_layer(layer) for layer in model.layers],
        "variables": [f"{v.dtype}{tuple(v.shape)}" for v in model.variables],
        "optimizer": {"class": type(optimizer).__name__, **optimizer_config},
        "loss": loss if isinstance(loss, str) else _plain(loss),
    }


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """One line per part of two fingerprints that differs: `what: checkpoint X, this fit Y`."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            lines += differences(old, new, f"{name}.")
        elif isinstance(old, list) and isinstance(new, list) and old != new:
            if len(old) != len(new):
                lines.append(f"{name}: checkpoint has {len(old)} ({_short(old)}), this fit {len(new)} ({_short(new)})")
            else:
                i = next(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)
                lines.append(f"{name}[{i}]: checkpoint {old[i]!r}, this fit {new[i]!r}")
        elif old != new:
            lines.append(f"{name}: checkpoint {old!r}, this fit {new!r}")
    return lines


def _short(items: list) -> str:
    text = ", ".join(map(str, items[:4]))
    return text + (", ..." if len(items) > 4 else "")


def check_fingerprint(saved: dict, current: dict, where: str) -> None:
    """Refuse a checkpoint of another run, naming every part that differs."""
    found = differences(saved, current)
    if found:
        raise CheckpointMismatchError(
            f"keras-spark: the checkpoint {where} belongs to another run, so fit will not resume from it:\n  "
            + "\n  ".join(found)
            + "\nGive fit a new checkpoint location to start afresh, or the model, data and arguments it was "
              "written with to resume.")
