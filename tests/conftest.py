import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/listings.py and friends

import fedmq  # noqa: E402
from worker_procs import AMQP_URL, WorkerProcesses  # noqa: E402

#: the worker services every RabbitMQ test may use (the ids the seed listings use)
SERVICE_IDS = ("bob", "alice", "secure_worker")


@pytest.fixture(scope="session")
def worker_processes(tmp_path_factory):
    procs = WorkerProcesses(tmp_path_factory.mktemp("workers"))
    for worker_id in SERVICE_IDS:
        procs.start(worker_id, wait=False)
    for worker_id in SERVICE_IDS:
        procs.wait_consuming(worker_id, procs.procs[worker_id])
    yield procs
    procs.stop_all()


@pytest.fixture
def hook():
    return fedmq.TorchHook(torch)


@pytest.fixture(params=["local", pytest.param("amqp", marks=pytest.mark.amqp)])
def transport(request):
    return request.param


@pytest.fixture
def worker_factory(request, transport):
    """None for in-process workers; for "amqp", a drop-in for `sy.VirtualWorker(hook, id=...)`
    that returns a client of the running worker service with that id (emptied first)."""
    if transport == "local":
        return None
    request.getfixturevalue("worker_processes")

    def make(hook, id, **_options):
        worker = fedmq.AMQPClientWorker(hook, id=id, url=AMQP_URL, timeout=60)
        worker.clear_objects()
        return worker
    return make


def _worker(hook, worker_factory, worker_id):
    if worker_factory is None:
        return fedmq.VirtualWorker(hook, id=worker_id)
    return worker_factory(hook, id=worker_id)


@pytest.fixture
def bob(hook, worker_factory):
    return _worker(hook, worker_factory, "bob")


@pytest.fixture
def alice(hook, worker_factory):
    return _worker(hook, worker_factory, "alice")


@pytest.fixture
def vbob(hook):
    """An in-process bob, for tests that look inside the worker."""
    return fedmq.VirtualWorker(hook, id="bob")
