"""Running `python -m fedmq.cli ...` as a person or a script would: with stdin a terminal (a
pseudo-terminal, answering a y/N question) or not one (/dev/null), for the confirmation tests
of `fedmq queues purge|delete` and `fedmq dead-letters purge`."""
from __future__ import annotations

import os
import subprocess
import sys


def run_fedmq(*argv: str, answer: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `fedmq *argv`; with `answer`, stdin is a terminal on which `answer` is typed (and
    Enter), else stdin is /dev/null (not a terminal). Output is captured as text."""
    command = [sys.executable, "-m", "fedmq.cli", *argv]
    if answer is None:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(command, stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.close(slave)
        slave = -1
        os.write(master, answer.encode() + b"\n")  # kept by the terminal until it is read
        out, err = proc.communicate(timeout=timeout)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single line a refused command writes to stderr (asserting there is one, no
    traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]
