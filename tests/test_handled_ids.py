"""The record of handled message ids (fedmq/service.py HandledIds): exactly-once across
restarts, bounded on disk, cheap to load."""
from __future__ import annotations

import time

from fedmq.service import HandledIds


def test_ids_survive_a_restart_and_the_oldest_are_forgotten(tmp_path):
    path = tmp_path / "w.handled"
    ids = HandledIds(path, size=10)
    for i in range(25):
        ids.add(f"m{i}")
    ids.close()
    again = HandledIds(path, size=10)
    assert all(f"m{i}" in again for i in range(15, 25))
    assert not any(f"m{i}" in again for i in range(15))


def test_the_file_stays_bounded_however_many_messages_pass(tmp_path):
    path = tmp_path / "w.handled"
    ids = HandledIds(path, size=100)
    for i in range(10_000):
        ids.add(f"{i:032x}")
        assert ids._lines < 200
    ids.close()
    lines = path.read_text().split()
    assert 100 <= len(lines) < 200 and lines[-1] == f"{9_999:032x}"
    assert not (tmp_path / "w.handled.tmp").exists()


def test_a_file_grown_by_an_older_version_is_compacted_and_loads_fast(tmp_path):
    path = tmp_path / "w.handled"
    path.write_text("".join(f"{i:032x}\n" for i in range(1_000_000)))  # 33 MB
    started = time.monotonic()
    ids = HandledIds(path, size=1000)
    assert time.monotonic() - started < 5
    assert f"{999_999:032x}" in ids and f"{0:032x}" not in ids
    assert len(path.read_text().split()) == 1000
    ids.close()
