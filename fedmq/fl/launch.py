"""Worker service processes for a run over RabbitMQ (`fedmq train --url ... --launch`, and
`make demo BROKER=...`): one `fedmq worker --id ... --dataset ... --labels ...` per data owner
plus the testing worker, logging to files in the run folder, stopped (SIGTERM) at the end."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time


class WorkerLauncher:
    def __init__(self, url: str, log_dir: str | pathlib.Path) -> None:
        self.url = url
        self.log_dir = pathlib.Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, worker_id: str, dataset: str, labels: str | None = None,
              testing: bool = False) -> subprocess.Popen:
        args = [sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id, "--url",
                self.url, "--dataset", dataset]
        args += ["--testing"] if testing else (["--labels", labels] if labels else [])
        log = open(self.log_path(worker_id), "a")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        self.procs[worker_id] = proc
        return proc

    def log_path(self, worker_id: str) -> pathlib.Path:
        return self.log_dir / f"{worker_id}.log"

    def wait_consuming(self, timeout: float = 120.0) -> None:
        """Until every started worker logged that it consumes its queue."""
        deadline = time.monotonic() + timeout
        waiting = set(self.procs)
        while waiting and time.monotonic() < deadline:
            for worker_id in list(waiting):
                proc = self.procs[worker_id]
                text = self.log_path(worker_id).read_text()
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {worker_id} exited: {text[-2000:]}")
                if "consuming" in text:
                    waiting.discard(worker_id)
            time.sleep(0.2)
        if waiting:
            raise TimeoutError(f"workers did not start within {timeout} s: {sorted(waiting)}")

    def stop(self, worker_id: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(worker_id, None)
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
