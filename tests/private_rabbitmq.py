"""A private RabbitMQ node for the tests that change node-wide state (broker settings such as
`max_message_size`, users imported from definitions.json): they must not disturb the shared
broker, other test runs on it, or anyone else using it.

The node lives in its own directory: HOME (so its Erlang cookie is its own), RABBITMQ_NODENAME
`fedmq-test-<hex>@localhost`, free ports for AMQP, the management API and Erlang distribution,
and its own mnesia, log, pid, config, enabled-plugins and env files. It is started with
`rabbitmq-server -detached`, managed with `rabbitmqctl -n <node>`, and stopped through its
pid (SIGTERM, then SIGKILL). Debian's /usr/sbin/rabbitmq-* wrappers switch to the rabbitmq user
(resetting HOME), so the scripts they wrap are run directly.

Nodes live under <tmp>/fedmq-test-nodes/<name>/ next to an `owner` file (the pytest pid): a
run that was killed cannot stop its node, so each start first stops the nodes whose owner is
gone (only a process whose command line names that node's directory is signalled).
"""
from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

NODES_ROOT = pathlib.Path(tempfile.gettempdir()) / "fedmq-test-nodes"


class PrivateNodeError(RuntimeError):
    """The private node could not be started (the message says why)."""


def rabbitmq_script(name: str) -> str | None:
    """Path of RabbitMQ's `name` script (rabbitmq-server, rabbitmqctl), past Debian's
    wrapper; None when RabbitMQ is not installed."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/lib/rabbitmq/bin/{name}") if os.path.exists(p)),
        None)
    if found is None:
        return None
    real = os.path.realpath(found)
    if os.path.basename(real) == "rabbitmq-script-wrapper":
        real = os.path.join(os.path.dirname(real), name)
    return real if os.access(real, os.X_OK) else None


def free_ports(n: int) -> list[int]:
    """n distinct local TCP ports nothing listens on (bound together, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM `pid` (the Erlang VM then shuts the node down cleanly), SIGKILL after
    `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def sweep_orphans() -> list[str]:
    """Stop the nodes of runs whose pytest process is gone; remove their directories."""
    swept = []
    if not NODES_ROOT.is_dir():
        return swept
    for node_dir in NODES_ROOT.iterdir():
        try:
            owner = int((node_dir / "owner").read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or _alive(owner):
            continue
        try:
            pid = int((node_dir / "rabbitmq.pid").read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _alive(pid) and str(node_dir) in _cmdline(pid):
            _terminate(pid, timeout=30)
        shutil.rmtree(node_dir, ignore_errors=True)
        swept.append(node_dir.name)
    return swept


class PrivateRabbitMQ:
    """One private node: start(), ctl(...), amqp_url, management_url, stop()."""

    def __init__(self) -> None:
        self.id = f"fedmq-test-{secrets.token_hex(4)}"
        self.node = f"{self.id}@localhost"
        self.dir = NODES_ROOT / self.id
        self.amqp_port, self.management_port, self.dist_port = free_ports(3)
        self.pid: int | None = None
        self.pid_file = self.dir / "rabbitmq.pid"
        #: the Erlang cookie (nodes of one cluster share it); None: Erlang makes one
        self.cookie: str | None = None
        #: more rabbitmq.conf lines (a TLS listener, say), written after the node's own
        self.extra_conf = ""
        self.env = dict(
            os.environ,
            HOME=str(self.dir),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
        )

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def _write_files(self) -> None:
        self.dir.mkdir(parents=True)
        (self.dir / "owner").write_text(str(os.getpid()))
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n" + self.extra_conf)
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        if self.cookie is not None:
            cookie = self.dir / ".erlang.cookie"
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        # instead of /etc/rabbitmq/rabbitmq-env.conf (which names the shared node)
        (self.dir / "rabbitmq-env.conf").write_text(
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n')

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `rabbitmqctl -n <node> args...` against this node."""
        ctl = rabbitmq_script("rabbitmqctl")
        if ctl is None:
            raise PrivateNodeError("rabbitmqctl is not installed")
        return subprocess.run([ctl, "-n", self.node, *args], env=self.env, cwd=self.dir,
                              capture_output=True, text=True, timeout=timeout)

    def log_tail(self, chars: int = 2000) -> str:
        logs = sorted((self.dir / "log").glob("*.log")) if (self.dir / "log").is_dir() else []
        return "".join(p.read_text(errors="replace") for p in logs)[-chars:]

    def start(self, timeout: float = 120) -> "PrivateRabbitMQ":
        server = rabbitmq_script("rabbitmq-server")
        if server is None or rabbitmq_script("rabbitmqctl") is None:
            raise PrivateNodeError("rabbitmq-server is not installed (apt-get install "
                                   "rabbitmq-server)")
        sweep_orphans()
        self._write_files()
        return self._launch(timeout)

    def restart(self, timeout: float = 120) -> "PrivateRabbitMQ":
        """Stop the node (SIGTERM by pid: a clean shutdown) and start it again on the same
        ports with the same data (durable queues and persistent messages survive)."""
        self.halt()
        return self._launch(timeout)

    def halt(self) -> None:
        """Stop the node (SIGTERM by pid), keeping its data: `resume()` starts it again."""
        if self.pid is not None and str(self.dir) in _cmdline(self.pid):
            _terminate(self.pid, 60)
        self.pid = None

    def resume(self, timeout: float = 120) -> "PrivateRabbitMQ":
        """Start a halted node again on the same ports with the same data."""
        return self._launch(timeout)

    def _launch(self, timeout: float) -> "PrivateRabbitMQ":
        server = rabbitmq_script("rabbitmq-server")
        started = subprocess.run([server, "-detached"], env=self.env, cwd=self.dir,
                                 capture_output=True, text=True, timeout=60)
        if started.returncode != 0:
            raise PrivateNodeError(f"`rabbitmq-server -detached` exited {started.returncode}: "
                                   f"{(started.stderr or started.stdout)[-1000:]}")
        waited = self.ctl("wait", str(self.pid_file), "--timeout", str(int(timeout)),
                          timeout=timeout + 30)
        try:
            self.pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            self.pid = None
        if waited.returncode != 0:
            self.stop()
            raise PrivateNodeError(f"node {self.node} did not start: "
                                   f"{(waited.stderr or waited.stdout)[-1000:]}\n"
                                   f"log: {self.log_tail()}")
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the node by its pid and remove its directory."""
        if self.pid is not None and str(self.dir) in _cmdline(self.pid):
            _terminate(self.pid, timeout)
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


def start_or_skip() -> PrivateRabbitMQ:
    """A started private node of the test's own, or pytest.skip saying why it cannot start."""
    import pytest

    node = PrivateRabbitMQ()
    try:
        return node.start()
    except (PrivateNodeError, OSError, subprocess.TimeoutExpired) as exc:
        node.stop()
        pytest.skip(f"could not start a private RabbitMQ node: {exc}")


class PrivateCluster:
    """Private nodes joined into one RabbitMQ cluster (same cookie; the others join the
    first): `nodes[i]`, `start()`, `stop()`."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [PrivateRabbitMQ() for _ in range(size)]
        cookie = secrets.token_hex(16).upper()
        for node in self.nodes:
            node.cookie = cookie

    def start(self, timeout: float = 180) -> "PrivateCluster":
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(node.start, timeout) for node in self.nodes]:
                future.result()
        first = self.nodes[0].node
        for node in self.nodes[1:]:
            for args in (("stop_app",), ("join_cluster", first), ("start_app",)):
                done = node.ctl(*args)
                if done.returncode != 0:
                    raise PrivateNodeError(f"{node.node}: rabbitmqctl {' '.join(args)} failed: "
                                           f"{(done.stderr or done.stdout)[-1000:]}")
        status = self.nodes[0].ctl("cluster_status", "--formatter", "json")
        running = status.stdout.count("fedmq-test-") if status.returncode == 0 else 0
        if running < 2 * len(self.nodes):  # each node named under disk nodes and running
            raise PrivateNodeError(f"the cluster did not form: {status.stdout[-1500:]}"
                                   f"{status.stderr[-500:]}")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster_or_skip(size: int = 3) -> PrivateCluster:
    """A started private cluster, or pytest.skip saying why it cannot start."""
    import pytest

    cluster = PrivateCluster(size)
    try:
        return cluster.start()
    except (PrivateNodeError, OSError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        pytest.skip(f"could not start a private RabbitMQ cluster: {exc}")
