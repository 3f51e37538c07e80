"""Worker service processes for a run over RabbitMQ (`fedmq train --url ... --launch`, and
`make demo BROKER=...`): one `fedmq worker --id ... --dataset ... --labels ...` per data owner
plus the testing worker (and for additive-sharing aggregation each aggregator, holding no data,
the data owners granting it `worker`), logging to files in the run folder, stopped (SIGTERM) at
the end.
`start_group` starts one process hosting several ids (`fedmq worker --ids a,b,c`), for runs
with many workers (benchmarks/rounds.py: 50 workers in a few processes).

The processes die with their coordinator however it dies (on Linux the kernel sends them
SIGTERM when it exits, even by SIGKILL: PR_SET_PDEATHSIG), and `supervise()` restarts one that
exits on its own (logged), as a process manager would."""
from __future__ import annotations

import ctypes
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

log = logging.getLogger("fedmq.launch")

#: prctl's option to have a signal sent when the parent exits (linux/prctl.h)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux only; elsewhere a
    no-op, and the coordinator's own shutdown still stops its workers)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def thread_env(processes: int, threads: int | None = None) -> dict[str, str]:
    """Torch threads for worker processes that share this machine: `threads`, else the cores
    split between the `processes` that train at once (at least 1), as torchrun does for its
    processes; an OMP_NUM_THREADS already set by the user wins. Without this, three workers on
    two cores each start two threads and spend their time preempting one another."""
    if "OMP_NUM_THREADS" in os.environ and threads is None:
        return {}
    n = threads or max(1, (os.cpu_count() or 1) // max(1, processes))
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}


def startup_phase(log_text: str, worker_ids: list[str]) -> str:
    """Where a `fedmq worker` process serving `worker_ids` is, from its log: "consuming"
    (every id consumes its queue), "data loaded" (it logged what it holds), else
    "starting"."""
    if all(f"fedmq worker {w}: consuming" in log_text for w in worker_ids):
        return "consuming"
    if any(f"worker {w} holds" in log_text for w in worker_ids):
        return "data loaded"
    return "starting"


def waiting_line(waiting: list[str], consuming: list[str], seconds: float) -> str:
    """"waiting for alice, bob (consuming: charlie) ... 6 s"."""
    ready = f" (consuming: {', '.join(consuming)})" if consuming else ""
    return f"waiting for {', '.join(waiting)}{ready} ... {seconds:.0f} s"


class WorkerLauncher:
    def __init__(self, url: str, log_dir: str | pathlib.Path,
                 env: dict[str, str] | None = None) -> None:
        self.url = url
        self.env = dict(env or {})  # added to this process's environment for the workers
        self.log_dir = pathlib.Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.hosted: dict[str, list[str]] = {}  # process name -> the worker ids it serves
        self.args: dict[str, list[str]] = {}  # process name -> its command line
        self.restarts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, worker_id: str, dataset: str | None, labels: str | None = None,
              testing: bool = False, grants: list[str] | tuple = ()) -> subprocess.Popen:
        """`fedmq worker --id worker_id` serving `dataset` (its `labels`, or the test set),
        or no data at all with dataset None (an aggregator of `--secure-aggregation
        additive:...`); `grants` are its `--grant ROLE:PRINCIPAL` options."""
        args = [sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id, "--url",
                self.url]
        if dataset is not None:
            args += ["--dataset", dataset]
            args += ["--testing"] if testing else (["--labels", labels] if labels else [])
        args += [f"--grant={grant}" for grant in grants]
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
        out = open(self.log_path(name), "a")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env),
                                preexec_fn=_die_with_parent)
        out.close()
        with self._lock:
            self.procs[name] = proc
            self.hosted[name] = worker_ids
            self.args[name] = args
        return proc

    def supervise(self, echo: Callable[[str], None] | None = None,
                  interval: float = 1.0) -> None:
        """Watch the processes from a thread of their own: one that exits without being
        stopped is started again with the same command line (said through `echo` and logged;
        its log file continues). Its workers come back empty, with a new incarnation."""
        say = echo or (lambda line: log.warning("%s", line))

        def watch() -> None:
            while not self._stopping.wait(interval):
                with self._lock:
                    dead = [(n, p) for n, p in self.procs.items() if p.poll() is not None]
                for name, proc in dead:
                    if self._stopping.is_set():
                        return
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    say(f"worker process {name} exited with code {proc.returncode}; starting "
                        f"it again (restart {self.restarts[name]}; log {self.log_path(name)})")
                    self._spawn(name, self.hosted[name], self.args[name])

        if self._supervisor is None:
            self._supervisor = threading.Thread(target=watch, name="fedmq-launch-supervisor",
                                                daemon=True)
            self._supervisor.start()

    def log_path(self, worker_id: str) -> pathlib.Path:
        return self.log_dir / f"{worker_id}.log"

    def wait_consuming(self, timeout: float = 120.0, echo: Callable[[str], None] | None = None,
                       report_every: float = 2.0) -> None:
        """Until every started process logged that each of its ids consumes its queue.
        With `echo`, says each process's progress as it happens ("worker service alice: data
        loaded (4 s)", "... consuming (9 s)") and, every `report_every` seconds, which are
        still awaited ("waiting for alice, bob (consuming: charlie) ... 6 s"). Raises
        RuntimeError (with the log's end) if a process exits, TimeoutError after `timeout`
        seconds."""
        started = time.monotonic()
        deadline = started + timeout
        waiting = set(self.procs)
        phases: dict[str, str] = {}
        next_report = started + report_every
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                proc = self.procs[name]
                text = self.log_path(name).read_text()
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {name} exited: {text[-2000:]}")
                phase = startup_phase(text, self.hosted.get(name, [name]))
                if echo is not None and phase != phases.get(name, "starting"):
                    echo(f"worker service {name}: {phase} "
                         f"({time.monotonic() - started:.0f} s)")
                phases[name] = phase
                if phase == "consuming":
                    waiting.discard(name)
            now = time.monotonic()
            if echo is not None and waiting and now >= next_report:
                echo(waiting_line([n for n in self.procs if n in waiting],
                                  [n for n in self.procs if n not in waiting], now - started))
                next_report = now + report_every
            time.sleep(0.2)
        if waiting:
            raise TimeoutError(f"workers did not start within {timeout} s: {sorted(waiting)}")

    def stop(self, worker_id: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        with self._lock:  # no longer supervised
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
        self._stopping.set()
        for worker_id in list(self.procs):
            self.stop(worker_id)
