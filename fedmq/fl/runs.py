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
import re
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
#: longest run name (a file name is at most 255 bytes; runs add -N)
MAX_NAME = 200
#: options that do not change a run's results: they may differ when it is resumed
NOT_RESULTS = frozenset({"url", "launch", "resume", "overwrite", "allow_changes", "log_level",
                         "wait_workers", "chunk_size", "progress", "runs_dir", "name",
                         "rounds", "max_updates"})


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (no checkpoint to resume, options changed)."""


def holds_run(path: pathlib.Path) -> bool:
    """Whether `path` holds a run: its results (metrics, a checkpoint) or its run.json (a run
    that is starting now, or stopped before its first round without `release`)."""
    return any((path / name).exists() for name in (RUN_FILE, "metrics.jsonl", CHECKPOINT))


def release(path: pathlib.Path) -> bool:
    """Give back a folder whose run stopped before its first round (no metrics, no
    checkpoint): its run.json goes, and the folder if nothing else is left. True if done."""
    if any((path / name).exists() for name in ("metrics.jsonl", CHECKPOINT)):
        return False
    (path / RUN_FILE).unlink(missing_ok=True)
    try:
        path.rmdir()  # only when empty (a --launch run keeps its logs)
    except OSError:
        pass
    return True


def open_run_dir(runs_dir: str | os.PathLike, name: str, *, resume: bool = False,
                 overwrite: bool = False,
                 echo: Callable[[str], None] = print) -> pathlib.Path:
    """The folder this run writes to, created. A new run gets `runs_dir/name` if that holds
    no run, else the first free `name-N` (N = 2, 3, ...; made with an exclusive mkdir, so two
    runs started together never share one) and `echo` says so; `overwrite` empties
    `runs_dir/name` of an earlier run's files instead; `resume` returns `runs_dir/name`.

    Raises RunFolderError: `resume` without a checkpoint there, `resume` with `overwrite`,
    a name that is not a plain folder name."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name \
            or len(name) > MAX_NAME:
        raise RunFolderError(f"--name must be a plain folder name of at most {MAX_NAME} "
                             f"characters, got {name[:60]!r}")
    base = pathlib.Path(runs_dir)
    if base.exists() and not base.is_dir():
        raise RunFolderError(f"--runs-dir {base} is a file, not a folder")
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
        _claim(path)
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
    """Take `path` for a new run: made with an exclusive mkdir, or, when it exists and holds
    no run, by creating its run.json exclusively (two runs started at once never share it)."""
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir() or holds_run(path):
            return False
    try:
        os.close(os.open(path / RUN_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def redact_url(url: str | None) -> str | None:
    """`url` without its password (what a run's record may keep)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        user = f"{parts.username}@" if parts.username else ""
        port = f":{parts.port}" if parts.port else ""
        return parts._replace(netloc=f"{user}{host}{port}").geturl()
    except ValueError:  # a malformed URL (port, IPv6): cut what could be a password
        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1@", url)


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


def last_step(path: pathlib.Path) -> int | None:
    """The last round (or version) metrics.jsonl records, None without one."""
    try:
        lines = (path / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        step = record.get("round", record.get("version")) if isinstance(record, dict) else None
        if isinstance(step, int):
            return step
    return None


def changed_options(recorded: Mapping[str, Any],
                    options: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(option, recorded value, new value) for each option that changes a run's results."""
    keys = (set(recorded) | set(options)) - NOT_RESULTS
    return [(k, recorded.get(k), options.get(k)) for k in sorted(keys)
            if _comparable(recorded.get(k)) != _comparable(options.get(k))]


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
