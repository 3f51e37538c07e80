"""Shared fixtures, and the run's RabbitMQ vhost (tests/broker_vhost.py).

pytest_configure runs after this file is imported and before any test module is: it creates
the run's vhost and points FEDMQ_AMQP_URL at it (FEDMQ_URL is removed: with it `fedmq train`
would leave its in-process workers for a broker; the tests give --url explicitly). So nothing
here may read FEDMQ_AMQP_URL at
import time: tests/worker_procs.py (which does) is imported inside the fixtures only.
"""
import atexit
import os
import signal
import sys
import threading

import pytest

# One torch thread per process, for this process and the worker processes it starts (they
# inherit the environment), unless the user set OMP_NUM_THREADS: on a small machine shared with
# other runs, torch's default of a thread per core makes every op wait for a descheduled
# thread (fedmq.fl.launch.thread_env explains the same for workers). Measured on a loaded 2-core
# machine: `make test-fast` 47 s instead of 73 s, half the CPU time. Set before torch starts.
# `fedmq train` and `fedmq worker` read FEDMQ_URL; the tests give every URL explicitly (the
# run's vhost), so a FEDMQ_URL from the user's shell must not send them elsewhere.
os.environ.pop("FEDMQ_URL", None)
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/listings.py and friends

import fedmq  # noqa: E402
from broker_vhost import RunVhost  # noqa: E402
from fedmq.management import ManagementAPIError  # noqa: E402

#: the worker services every RabbitMQ test may use (the ids the seed listings use)
SERVICE_IDS = ("bob", "alice", "secure_worker")


# --- the run's vhost ---------------------------------------------------------------------------

class _VhostState:
    run: RunVhost | None = None
    error: str | None = None
    swept: list[str] = []
    saved_env: dict[str, str | None] = {}
    saved_handlers: dict[int, object] = {}


def _interrupt(signum, frame):
    """SIGTERM/SIGHUP end the run like Ctrl-C: fixtures are torn down (worker processes
    stopped) and pytest_unconfigure deletes the vhost."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _close_client_connections() -> None:
    """Close every broker connection fedmq still has open (AMQPClientWorker's, a test's
    engines) before the vhost goes, so that none tries to reconnect to it (noise at exit)."""
    engine = sys.modules.get("fedmq.engine")
    if engine is not None:
        engine.close_all()


def _delete_vhost() -> None:
    run = _VhostState.run
    if run is None:
        return
    _close_client_connections()
    try:
        run.delete()
    except ManagementAPIError as exc:
        print(f"\nfedmq tests: could not delete vhost {run.name}: {exc}", file=sys.stderr)


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller made the vhost
        return
    run = RunVhost.new()
    try:
        _VhostState.swept = run.sweep_stale()
        run.create()
    except ManagementAPIError as exc:
        # No broker or no management API: the tests that need neither still run; the amqp
        # ones fail with this reason (pytest_runtest_setup), instead of sharing vhost "/".
        _VhostState.error = str(exc)
        if run.created:  # created, but the permissions could not be set
            try:
                run.delete()
            except ManagementAPIError:
                pass
        return
    _VhostState.run = run
    for name, value in (("FEDMQ_AMQP_URL", run.amqp_url),
                        ("FEDMQ_MANAGEMENT_URL", run.management_url)):
        _VhostState.saved_env[name] = os.environ.get(name)
        os.environ[name] = value  # inherited by the `fedmq worker` processes
    atexit.register(_delete_vhost)  # in case pytest_unconfigure is never reached
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                _VhostState.saved_handlers[sig] = signal.signal(sig, _interrupt)


def pytest_unconfigure(config):
    _delete_vhost()
    _VhostState.run = None
    for name, value in _VhostState.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _VhostState.saved_env = {}
    for sig, handler in _VhostState.saved_handlers.items():
        signal.signal(sig, handler)
    _VhostState.saved_handlers = {}


def pytest_report_header(config):
    run = _VhostState.run
    if run is not None:
        swept = (f"; deleted {len(_VhostState.swept)} vhost(s) left by killed runs"
                 if _VhostState.swept else "")
        return (f"fedmq: RabbitMQ tests in vhost {run.name} ({run.amqp_url.split('@')[-1]}), "
                f"deleted at the end{swept}")
    if _VhostState.error:
        return f"fedmq: no test vhost (amqp tests fail): {_VhostState.error}"
    return None


def pytest_runtest_setup(item):
    if _VhostState.error and item.get_closest_marker("amqp") is not None:
        pytest.fail(f"no RabbitMQ vhost for this run's amqp tests: {_VhostState.error} "
                    f"(`.ci/broker.sh` starts the broker and enables its management plugin)",
                    pytrace=False)


# --- broker nodes and worker services ----------------------------------------------------------

@pytest.fixture(scope="session")
def private_rabbitmq():
    """A RabbitMQ node of this run's own (tests/private_rabbitmq.py), for the tests that change
    node-wide state; skips when it cannot be started."""
    from private_rabbitmq import PrivateNodeError, PrivateRabbitMQ

    node = PrivateRabbitMQ()
    try:
        node.start()
    except (PrivateNodeError, OSError, TimeoutError) as exc:  # subprocess.TimeoutExpired too
        node.stop()
        pytest.skip(f"could not start a private RabbitMQ node: {exc}")
    yield node
    node.stop()


@pytest.fixture(scope="session")
def worker_processes(tmp_path_factory):
    from worker_procs import WorkerProcesses

    procs = WorkerProcesses(tmp_path_factory.mktemp("workers"))
    for worker_id in SERVICE_IDS:
        procs.start(worker_id, wait=False)
    for worker_id in SERVICE_IDS:
        procs.wait_consuming(worker_id, procs.procs[worker_id])
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def role_users():
    """Broker users made for the role tests (tests/role_users.py), deleted at the end."""
    from role_users import Users, sweep_stale_users

    sweep_stale_users()
    made = Users()
    yield made
    made.delete_all()


@pytest.fixture
def hook():
    hook = fedmq.TorchHook(torch)
    yield hook
    hook.context.close()  # its broker connections (one per URL) end with the test


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
    from worker_procs import AMQP_URL

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
