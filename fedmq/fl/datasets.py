"""What each worker of a run holds, told at its start: one line per worker with its samples
and per-label counts ("alice: 1 960 samples, labels 0:490 1:510 2:480 3:480"), from
`WorkerStats(datasets=True)` (fedmq.dataset_info on the worker). A worker whose policy does
not share such statistics with the coordinator says "label counts not published".
"""
from __future__ import annotations

import asyncio
from typing import Any

from fedmq.engine import RequestEngine
from fedmq.messages import WorkerStats


def thousands(n: int) -> str:
    """`n` with a space between thousands: 1960 -> "1 960"."""
    return f"{n:,}".replace(",", " ")


def counts_text(counts: list[int]) -> str:
    """"0:490 1:510 ..." for the labels present (count above 0)."""
    return " ".join(f"{label}:{n}" for label, n in enumerate(counts) if n)


def matching(datasets: list[dict], key: str | None, split: str) -> list[dict]:
    """The descriptions of `split` ("train"/"test") under `key` (any key if None, or if none
    is tagged `#key`)."""
    of_split = [d for d in datasets if f"#{split}" in d.get("tags", ())]
    keyed = [d for d in of_split if key and f"#{key}" in d.get("tags", ())]
    return keyed or of_split


def holding_lines(worker: str, answer: Any, key: str | None, split: str = "train") -> list[str]:
    """The console lines for `worker`'s `WorkerStats(datasets=True)` reply `answer` (a dict,
    or the exception the request raised): one per dataset of `split` under `key`."""
    if isinstance(answer, BaseException):
        return [f"{worker}: no dataset description ({type(answer).__name__}: {answer})"]
    if not isinstance(answer, dict) or "datasets" not in answer:
        return [f"{worker}: no dataset description (the worker does not give one)"]
    datasets = answer["datasets"]
    if datasets is None:
        return [f"{worker}: label counts not published"]
    found = matching(datasets, key, split)
    if not found:
        return [f"{worker}: holds no {split} data{f' for {key}' if key else ''}"]
    lines = []
    for d in found:
        named = "" if len(found) == 1 else \
            f" ({', '.join(t for t in d['tags'] if t not in ('#target', f'#{split}'))})"
        what = f"{worker}{named}: {thousands(d['samples'])} {split} samples"
        counts = d.get("label_counts")
        lines.append(f"{what}, labels {counts_text(counts)}" if counts
                     else f"{what} (targets are not class labels)")
    return lines


async def ask_datasets(connection: RequestEngine, workers: list[str],
                       timeout: float = 10.0) -> dict[str, Any]:
    """worker -> its `WorkerStats(datasets=True)` reply, or the exception the request raised
    (asked concurrently, each within `timeout` seconds)."""
    async def ask(worker: str) -> Any:
        try:
            return await connection.arequest(worker, WorkerStats(datasets=True),
                                             timeout=timeout, expiration=timeout)
        except Exception as exc:  # noqa: BLE001 - said in the worker's line
            return exc

    answers = await asyncio.gather(*(ask(w) for w in workers))
    return dict(zip(workers, answers))
