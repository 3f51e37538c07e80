"""Per-round checkpoints of a federated run, in fedmq's own wire format (serde `encode` /
`decode`: msgpack + raw tensor bytes; no pickle, no torch.save). Written to a temporary file
and renamed, so a crash never leaves half a checkpoint."""
from __future__ import annotations

import os
import pathlib
from typing import Any

from fedmq import serde

FILENAME = "checkpoint.fedmq"


def save(run_dir: str | os.PathLike, state: dict[str, Any]) -> pathlib.Path:
    path = pathlib.Path(run_dir) / FILENAME
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(serde.encode(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The last checkpoint of the run, or None when there is none."""
    path = pathlib.Path(run_dir) / FILENAME
    if not path.exists():
        return None
    state = serde.decode(path.read_bytes())
    if not isinstance(state, dict) or not isinstance(state.get("weights"), dict):
        raise serde.SerdeError(f"{path} is not a fedmq checkpoint")
    # decoded tensors alias the file's bytes: copy so the weights own their memory
    state["weights"] = {k: v.clone() for k, v in state["weights"].items()}
    return state


def load_run(run_dir: str | os.PathLike, model: str, seed: int) -> dict[str, Any] | None:
    """`load`, refusing a checkpoint of another run (another model or seed)."""
    state = load(run_dir)
    if state is not None and (state.get("model") != model or state.get("seed") != seed):
        raise ValueError(f"the checkpoint in {run_dir} is of model {state.get('model')!r} seed "
                         f"{state.get('seed')}, not {model!r} seed {seed}")
    return state
