"""Run folders: where a federated run leaves its files, never over an earlier run's.

    runs/<name>/run.json          the run's options, fedmq/torch/Python versions, start time
    runs/<name>/metrics.jsonl     one line per round (fedmq.fl.metrics)
    runs/<name>/metrics.png       its plot
    runs/<name>/checkpoint.fedmq  the last round's model (fedmq.fl.checkpoint)

`open_run_dir` picks the folder: a new run never writes into a folder that holds an earlier
run's files — it takes the next free name (`name-2`, `name-3`, ...) unless told to
`overwrite`; `resume` needs the folder's checkpoint and compares the options with the ones
recorded in its run.json (`changed_options`). Nothing here imports torch.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import shutil
import sys
from importlib import metadata
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.fedmq"  # fedmq.fl.checkpoint.FILENAME (that module imports torch)
#: files a run writes (what `overwrite` removes; other files in the folder are left alone)
RUN_FILES = (RUN_FILE, "metrics.jsonl", "metrics.png", CHECKPOINT, "checkpoint.tmp")
RUN_DIRS = ("logs",)
#: options that do not change a run's results: they may differ when it is resumed
NOT_RESULTS = frozenset({"url", "launch", "resume", "overwrite", "allow_changes", "log_level",
                         "wait_workers", "chunk_size", "progress", "runs_dir", "name",
                         "rounds", "max_updates"})


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (no checkpoint to resume, options changed)."""


def holds_run(path: pathlib.Path) -> bool:
    """Whether `path` holds an earlier run's results (metrics or a checkpoint; a run.json or
    logs alone are of a run that stopped before its first round and may be reused)."""
    return any((path / name).exists() for name in ("metrics.jsonl", CHECKPOINT))


def open_run_dir(runs_dir: str | os.PathLike, name: str, *, resume: bool = False,
                 overwrite: bool = False,
                 echo: Callable[[str], None] = print) -> pathlib.Path:
    """The folder this run writes to, created. A new run gets `runs_dir/name` if that holds
    no run, else the first free `name-N` (N = 2, 3, ...; made with an exclusive mkdir, so two
    runs started together never share one) and `echo` says so; `overwrite` empties
    `runs_dir/name` of an earlier run's files instead; `resume` returns `runs_dir/name`.

    Raises RunFolderError: `resume` without a checkpoint there, `resume` with `overwrite`,
    a name that is not a plain folder name."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise RunFolderError(f"--name must be a plain folder name, got {name!r}")
    base = pathlib.Path(runs_dir)
    path = base / name
    if resume:
        if overwrite:
            raise RunFolderError("--resume continues a run and --overwrite replaces it: "
                                 "give one of them")
        if not (path / CHECKPOINT).exists():
            raise RunFolderError(f"--resume: {path} has no checkpoint ({CHECKPOINT}) to "
                                 f"continue; start the run without --resume")
        return path
    base.mkdir(parents=True, exist_ok=True)
    if overwrite:
        path.mkdir(exist_ok=True)
        for file in RUN_FILES:
            (path / file).unlink(missing_ok=True)
        for folder in RUN_DIRS:
            shutil.rmtree(path / folder, ignore_errors=True)
        return path
    if _claim(path):
        return path
    for n in range(2, 10_000):
        candidate = base / f"{name}-{n}"
        if _claim(candidate):
            echo(f"{path} holds an earlier run; this run writes to {candidate} (--overwrite "
                 f"replaces the earlier run, --resume continues it)")
            return candidate
    raise RunFolderError(f"no free run folder name {name}-N in {base}; give --name")


def _claim(path: pathlib.Path) -> bool:
    try:
        path.mkdir()
    except FileExistsError:
        return not holds_run(path) and path.is_dir()
    return True


def redact_url(url: str | None) -> str | None:
    """`url` without its password (what a run's record may keep)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{user}{host}{port}").geturl()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("fedmq", "torch", "torchvision", "aio-pika", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def record(options: Mapping[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """What run.json holds: the options (URLs without passwords), the versions, the time."""
    opts = {k: (redact_url(v) if k == "url" else v) for k, v in options.items()}
    command = [redact_url(a) if "://" in a else a for a in (argv or sys.argv)]
    return {"options": opts, "versions": versions(), "command": command,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def write_record(path: pathlib.Path, rec: Mapping[str, Any], *, resumed: bool = False) -> None:
    """Write run.json (a resumed run appends its start to `resumed`, keeping the options)."""
    file = path / RUN_FILE
    if resumed and file.exists():
        old = read_record(path) or {}
        old.setdefault("resumed", []).append({"started": rec["started"],
                                              "versions": rec["versions"],
                                              "options": rec["options"]})
        rec = old
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2, default=str) + "\n")
    os.replace(tmp, file)


def read_record(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def changed_options(recorded: Mapping[str, Any],
                    options: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(option, recorded value, new value) for each option that changes a run's results."""
    keys = (set(recorded) | set(options)) - NOT_RESULTS
    return [(k, recorded.get(k), options.get(k)) for k in sorted(keys)
            if _comparable(recorded.get(k)) != _comparable(options.get(k))]


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
