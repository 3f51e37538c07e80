"""`fedmq dashboard` during a real run: real worker processes on the run's vhost, a real
`fedmq train` subprocess, the dashboard process, and a real headless Chromium (selenium with
the system's chromedriver) reading the page: the round, the accuracy the coordinator printed,
the worker rows and the queue depths. Also the server's answers (JSON, Host check) and its
start-up errors (one line, exit 2).

Chromium and chromedriver are Debian packages `.ci/system-deps.sh` installs; without them the
browser test skips, saying so."""
from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.amqp]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: the flags a headless Chromium needs here (the network is closed: no sandbox, no
#: background connections that would hang)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-proxy-server",
                  "--disable-dev-shm-usage", "--window-size=1280,1600")
TRAIN = ("dash-w1", "dash-w2")
TESTING = "dash-testing"
ROUNDS = 3


# --- processes -------------------------------------------------------------------------------

class Lines:
    """A process's output, read line by line on a thread (so waiting for one has a timeout)."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {self.seen}")


def _dashboard(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("FEDMQ_URL", None)
    return subprocess.Popen([sys.executable, "-m", "fedmq.cli", "dashboard", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


class Dashboard:
    """A `fedmq dashboard --port 0` process on the run's vhost, and its base URL."""

    def __init__(self, *args: str) -> None:
        self.proc = _dashboard("--url", os.environ["FEDMQ_AMQP_URL"], "--port", "0",
                               "--refresh", "0.5", *args)
        self.out, self.err = Lines(self.proc.stdout), Lines(self.proc.stderr)
        try:
            found = self.out.wait_for(r"(http://[^/ ]+/)", timeout=30)
        except AssertionError:
            self.stop()
            raise AssertionError(f"the dashboard did not start: {self.err.seen}") from None
        self.url = found.group(1)

    def get(self, path: str, host: str | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.url + path.lstrip("/"))
        if host:
            request.add_header("Host", host)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def dashboard():
    made = []

    def start(*args: str) -> Dashboard:
        made.append(Dashboard(*args))
        return made[-1]
    yield start
    for board in made:
        board.stop()


@pytest.fixture(scope="module")
def dash_workers(tmp_path_factory):
    """Two training ids (one process, IID halves of mnist5k) and the testing worker."""
    from worker_procs import WorkerProcesses, consumer_count
    procs = WorkerProcesses(tmp_path_factory.mktemp("dash-workers"))
    try:
        procs.start(TRAIN[0], "--id", TRAIN[1], "--dataset", "mnist5k", "--iid-parts", "2",
                    wait=False)
        procs.start(TESTING, "--dataset", "mnist5k", "--testing", wait=False)
        for worker_id in (TRAIN[0], TESTING):
            procs.wait_consuming(worker_id, procs.procs[worker_id], timeout=120)
        deadline = time.monotonic() + 30
        while consumer_count(f"fedmq.worker.{TRAIN[1]}", procs.url) < 1:
            assert time.monotonic() < deadline, procs.log(TRAIN[0])
            time.sleep(0.2)
        yield procs
    finally:
        procs.stop_all(delete_queues=True)
        for worker_id in (TRAIN[1],):
            from worker_procs import delete_queue
            delete_queue(f"fedmq.worker.{worker_id}", procs.url)


# --- the browser -----------------------------------------------------------------------------

@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by selenium through the system's chromedriver."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: run `sudo bash .ci/system-deps.sh` "
                    f"(Debian packages chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


_READ_PAGE = """
const text = (id) => document.getElementById(id).innerText;
const rows = (table) => {
  const found = {};
  for (const row of document.querySelectorAll('#' + table + ' tbody tr')) {
    const cells = Array.from(row.querySelectorAll('td'), (cell) => cell.innerText.trim());
    if (cells.length) found[cells[0]] = cells;
  }
  return found;
};
const page = {workers: rows('workers'), queues: rows('queues')};
for (const name of ['round', 'status', 'accuracy', 'dead-letters', 'events']) {
  page[name] = text(name).trim();
}
return page;
"""


def _page(driver) -> dict:
    """What the page shows: the cards, the worker rows, the queue rows (cell texts), read in
    one script, so a redraw (every second; slower than a read on a busy machine) never
    falls between two reads."""
    return driver.execute_script(_READ_PAGE)


def _wait_page(driver, check, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            page = _page(driver)
            if check(page):
                return page
        except Exception as exc:  # noqa: BLE001 - a row redrawn while read (stale element)
            if type(exc).__name__ != "StaleElementReferenceException":
                raise
            page = {"stale": True}
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed what was expected: {page}")
        time.sleep(0.25)


# --- the tests -------------------------------------------------------------------------------

@pytest.mark.slow
def test_page_follows_a_real_run(browser, dash_workers, dashboard, tmp_path):
    board = dashboard()
    browser.get(board.url)
    assert browser.title == "fedmq dashboard"
    _wait_page(browser, lambda page: "fedmq.worker.dash-w1" in page["queues"])

    train = subprocess.run(
        [sys.executable, "-m", "fedmq.cli", "train", "--url", os.environ["FEDMQ_AMQP_URL"],
         "--workers", ",".join(TRAIN), "--testing", TESTING, "--rounds", str(ROUNDS),
         "--eval-every", "1", "--batches", "2", "--runs-dir", str(tmp_path),
         "--name", "dash-run", "--wait-workers", "30", "--round-timeout", "60"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert train.returncode == 0, train.stdout + train.stderr
    printed = re.findall(r"Federated model: Average loss: [0-9.]+, Accuracy: \d+/\d+ "
                         r"\((\d+\.\d+)%\)", train.stdout)
    assert len(printed) == ROUNDS, train.stdout
    accuracy = float(printed[-1])

    def shows_the_run(page: dict) -> bool:
        shown = re.fullmatch(r"(\d+\.\d+)%", page["accuracy"])
        return (page["round"] == f"{ROUNDS} / {ROUNDS}" and shown is not None
                and abs(float(shown.group(1)) - accuracy) < 0.006
                and set(TRAIN) <= set(page["workers"]))
    # each worker's consumer count comes from the management API, whose statistics lag (a
    # fresh run once read 0 consumers for a live worker): wait for it as for the queues below
    page = _wait_page(browser, lambda page: shows_the_run(page) and all(
        page["workers"][w][9:10] == ["1"] for w in TRAIN))
    assert page["status"] == "finished"
    assert browser.find_element("id", "run").text == "dash-run"
    for worker in TRAIN:  # worker, last fit, step, when, samples, loss, update acc., fit s,
        cells = page["workers"][worker]  # ok / failed, consumers, queued, reason
        assert cells[1:3] == ["ok", str(ROUNDS)], cells
        assert re.fullmatch(r"\d\d:\d\d:\d\d", cells[3]) and int(cells[4]) > 0, cells
        assert float(cells[5]) > 0 and re.fullmatch(r"\d+\.\d\d%", cells[6]), cells
        assert cells[8] == f"{ROUNDS} / 0" and cells[9] == "1", cells
    # the queues: depth (ready), unacked and consumers of each worker's queue, dead letters
    page = _wait_page(browser, lambda page: all(
        page["queues"].get(f"fedmq.worker.{w}", [""] * 4)[3] == "1" for w in TRAIN))
    for worker in (*TRAIN, TESTING):
        name, ready, unacked, consumers = page["queues"][f"fedmq.worker.{worker}"][:4]
        assert ready.isdigit() and unacked.isdigit() and consumers == "1", page["queues"]
    assert "fedmq.dead-letters" in page["queues"] and page["dead-letters"].isdigit()
    svg_points = browser.find_elements("css selector", "#accuracy-chart circle")
    assert len(svg_points) == ROUNDS

    # event text is shown as text: a worker id that is HTML stays a string in a cell
    evil = '<img id="injected" src="x">'
    _publish_event("fit.failed", {"round": ROUNDS, "worker": evil, "reason": "<b>bold</b>"})
    page = _wait_page(browser, lambda page: evil in page["workers"])
    assert page["workers"][evil][-1] == "<b>bold</b>"
    assert browser.find_elements("id", "injected") == []
    assert not browser.find_elements("css selector", "#workers b")


def _publish_event(key: str, body: dict) -> None:
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(os.environ["FEDMQ_AMQP_URL"]))
    try:
        conn.channel().basic_publish("fedmq.events", key, json.dumps(body).encode())
    finally:
        conn.close()


def test_api_state_and_headers(dashboard):
    board = dashboard()
    _publish_event("round.started", {"round": 1, "rounds": 4, "workers": ["api-w"],
                                     "run": "api-run"})
    deadline = time.monotonic() + 10
    while True:
        status, headers, body = board.get("/api/state")
        state = json.loads(body)
        if state["current"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert (state["current"], state["total"], state["run"]) == (1, 4, "api-run")
    assert [w["id"] for w in state["workers"]] == ["api-w"]
    assert any(q["name"] == "fedmq.dead-letters" for q in state["queues"])
    status, headers, body = board.get("/")
    assert status == 200 and b"/app.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, _ = board.get("/", host="attacker.example:80")  # DNS rebinding
    assert status == 421
    assert board.get("/etc/passwd")[0] == 404 and board.get("/../server.py")[0] == 404
    assert board.stop() == 0  # SIGTERM: a normal stop


def test_ctrl_c_exits_130(dashboard):
    board = dashboard()
    board.proc.send_signal(signal.SIGINT)
    assert board.proc.wait(15) == 130
    board.err.wait_for(r"^fedmq dashboard: interrupted$", timeout=5)
    assert not any("Traceback" in line for line in board.err.seen)


def test_non_loopback_host_warns(dashboard):
    board = dashboard("--host", "0.0.0.0")
    board.err.wait_for(r"WARNING: listening on 0\.0\.0\.0.*no login", timeout=5)


def _start_error(*args: str) -> str:
    started = time.monotonic()
    proc = _dashboard(*args)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 2, (out, err)
    assert time.monotonic() - started < 15
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("fedmq dashboard: ")
    return err


def test_start_up_problems_are_one_line_and_exit_2():
    url = os.environ["FEDMQ_AMQP_URL"]
    assert "--url:" in _start_error("--url", url.rsplit("/", 1)[0] + "/fedmq-no-such-vhost",
                                    "--port", "0")
    assert "--management-url:" in _start_error(
        "--url", url, "--port", "0", "--management-url", "http://127.0.0.1:1")
    assert "refused user" in _start_error("--url", url, "--port", "0",
                                          "--management-password", "wrong")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"--port {port}" in _start_error("--url", url, "--port", str(port))
    assert "--refresh must be at least" in _start_error("--refresh", "0")
    assert "--port must be" in _start_error("--port", "70000")
