"""Run a seed listing (tests/seed/*.py) and capture what it prints.

`transport="local"` runs the listing exactly as written (only `import fedmq as sy` differs from
the seed). Other transports replace the worker constructor and nothing else, as a user would.
"""
from __future__ import annotations

import contextlib
import io
import pathlib
import re

SEED_DIR = pathlib.Path(__file__).parent / "seed"
POINTER_RE = re.compile(r"\(Wrapper\)>\[PointerTensor \| (\w+):(\d+) -> (\w+):(\d+)\]")


def run_listing(name: str, worker_factory=None) -> tuple[str, dict]:
    source = (SEED_DIR / name).read_text()
    namespace: dict = {"__name__": "__main__", "__file__": str(SEED_DIR / name)}
    if worker_factory is not None:
        source = source.replace("sy.VirtualWorker(", "__fedmq_worker__(")
        namespace["__fedmq_worker__"] = worker_factory
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, str(SEED_DIR / name), "exec"), namespace)
    return out.getvalue(), namespace
