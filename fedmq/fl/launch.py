"""Worker service processes for a run over RabbitMQ (`fedmq train --url ... --launch`, and
`make demo BROKER=...`): one `fedmq worker --id ... --dataset ... --labels ...` per data owner
plus the testing worker, logging to files in the run folder, stopped (SIGTERM) at the end.
`start_group` starts one process hosting several ids (`fedmq worker --ids a,b,c`), for runs
with many workers (benchmarks/rounds.py: 50 workers in a few processes)."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time


def thread_env(processes: int, threads: int | None = None) -> dict[str, str]:
    """Torch threads for worker processes that share this machine: `threads`, else the cores
    split between the `processes` that train at once (at least 1), as torchrun does for its
    processes; an OMP_NUM_THREADS already set by the user wins. Without this, three workers on
    two cores each start two threads and spend their time preempting one another."""
    if "OMP_NUM_THREADS" in os.environ and threads is None:
        return {}
    n = threads or max(1, (os.cpu_count() or 1) // max(1, processes))
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}


class WorkerLauncher:
    def __init__(self, url: str, log_dir: str | pathlib.Path,
                 env: dict[str, str] | None = None) -> None:
        self.url = url
        self.env = dict(env or {})  # added to this process's environment for the workers
        self.log_dir = pathlib.Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.hosted: dict[str, list[str]] = {}  # process name -> the worker ids it serves

    def start(self, worker_id: str, dataset: str, labels: str | None = None,
              testing: bool = False) -> subprocess.Popen:
        args = [sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id, "--url",
                self.url, "--dataset", dataset]
        args += ["--testing"] if testing else (["--labels", labels] if labels else [])
        return self._spawn(worker_id, [worker_id], args)

    def start_group(self, name: str, worker_ids: list[str], dataset: str,
                    labels: str | None = None, iid_parts: int = 0,
                    first_part: int = 0) -> subprocess.Popen:
        """One process (`name`, logging to `<name>.log`) serving every id in `worker_ids`;
        with `iid_parts` the ids hold IID parts `first_part`, `first_part + 1`, ..."""
        args = [sys.executable, "-m", "fedmq.cli", "worker", "--ids", ",".join(worker_ids),
                "--url", self.url, "--dataset", dataset]
        args += ["--labels", labels] if labels else []
        args += ["--iid-parts", str(iid_parts), "--first-part", str(first_part)] \
            if iid_parts else []
        return self._spawn(name, list(worker_ids), args)

    def _spawn(self, name: str, worker_ids: list[str], args: list[str]) -> subprocess.Popen:
        log = open(self.log_path(name), "a")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env))
        log.close()
        self.procs[name] = proc
        self.hosted[name] = worker_ids
        return proc

    def log_path(self, worker_id: str) -> pathlib.Path:
        return self.log_dir / f"{worker_id}.log"

    def wait_consuming(self, timeout: float = 120.0) -> None:
        """Until every started process logged that each of its ids consumes its queue."""
        deadline = time.monotonic() + timeout
        waiting = set(self.procs)
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                proc = self.procs[name]
                text = self.log_path(name).read_text()
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {name} exited: {text[-2000:]}")
                if all(f"fedmq worker {w}: consuming" in text
                       for w in self.hosted.get(name, [name])):
                    waiting.discard(name)
            time.sleep(0.2)
        if waiting:
            raise TimeoutError(f"workers did not start within {timeout} s: {sorted(waiting)}")

    def stop(self, worker_id: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(worker_id, None)
        self.hosted.pop(worker_id, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for worker_id in list(self.procs):
            self.stop(worker_id)
