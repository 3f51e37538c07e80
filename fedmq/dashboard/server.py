"""The dashboard's web server and its two followers.

    dashboard = Dashboard(amqp_url, management, refresh=2.0)
    await dashboard.start()                  # TransportError / ManagementAPIError: cannot start
    address = await dashboard.serve("127.0.0.1", 8080)   # OSError: the port is taken
    ...
    await dashboard.close()

`Dashboard` keeps one RunState (state.py): an EventSubscription (fedmq.eventstream) folds every
`fedmq.events` message into it, and a poller reads the vhost's fedmq.* queues from the
management API every `refresh` seconds (in a thread: fedmq.management uses urllib). The HTTP
side is aiohttp:

    GET /              static/index.html     GET /app.js, /app.css   the page's script and style
    GET /api/state     RunState.as_json()    (Cache-Control: no-store)

Every answer forbids framing and loading anything from elsewhere (Content-Security-Policy
default-src 'self'). Bound to a loopback address, requests must name a loopback Host (a web
page elsewhere cannot read the dashboard through DNS rebinding).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from fedmq.dashboard.state import RunState
from fedmq.eventstream import ALL_EVENTS, EventSubscription
from fedmq.management import ManagementAPIError, list_queues

log = logging.getLogger("fedmq.dashboard")

STATIC = pathlib.Path(__file__).with_name("static")
#: the files GET /<name> serves, with their content types
PAGES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass(frozen=True)
class ManagementAPI:
    """Where and as whom the management API is read, and the vhost whose queues are shown."""

    url: str
    user: str
    password: str
    vhost: str


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The followers (events, queues) and the aiohttp application around one RunState."""

    def __init__(self, amqp_url: str, management: ManagementAPI, *, refresh: float = 2.0,
                 patterns: tuple[str, ...] = (ALL_EVENTS,)) -> None:
        self.state = RunState()
        self.management = management
        self.refresh = refresh
        self.subscription = EventSubscription(amqp_url, patterns,
                                              connection_name="fedmq dashboard",
                                              on_status=self._on_amqp_status)
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self.loopback_only = True

    # -- followers ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the events and read the queues once, then follow both. Raises
        TransportError or ManagementAPIError (one sentence each) when either cannot start
        (`close` closes what was opened)."""
        await self.subscription.start()
        self.state.set_amqp_status(f"following fedmq.events on {self.subscription.where}")
        await self.poll_queues(raise_errors=True)
        self._tasks = [asyncio.ensure_future(self._follow_events()),
                       asyncio.ensure_future(self._follow_queues())]

    def _on_amqp_status(self, text: str) -> None:
        log.warning("%s", text)
        self.state.set_amqp_status(text)

    async def _follow_events(self) -> None:
        async for event in self.subscription:
            self.state.apply(event.routing_key, event.body, event.received)

    async def poll_queues(self, raise_errors: bool = False) -> None:
        """One sample of the vhost's fedmq.* queues into the state; a failure is kept on the
        state (and raised with `raise_errors`)."""
        api = self.management
        try:
            rows = await asyncio.to_thread(list_queues, api.url, api.user, api.password,
                                           api.vhost, False, 5.0)
        except ManagementAPIError as exc:
            if raise_errors:
                raise
            if self.state.queue_error != str(exc):
                log.warning("queues: %s", exc)
            self.state.set_queue_error(str(exc))
            return
        self.state.set_queues(rows, time.time())

    async def _follow_queues(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            await self.poll_queues()

    # -- HTTP --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application (routes and headers; see the module docstring)."""
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self._page)
        app.router.add_get("/api/state", self._api_state)
        for name in PAGES:
            if name != "index.html":
                app.router.add_get(f"/{name}", self._page)
        return app

    @web.middleware
    async def _headers(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        if self.loopback_only and not _loopback_host_header(request.host):
            return web.Response(status=421, text="this dashboard answers to localhost only\n")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _page(self, request: web.Request) -> web.Response:
        name = request.path.lstrip("/") or "index.html"
        body = (STATIC / name).read_bytes()
        return web.Response(body=body, content_type=PAGES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _api_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.as_json(), headers={"Cache-Control": "no-store"})

    async def serve(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0: any free one); the address actually bound. Raises
        OSError when it cannot listen (the port is taken, the address is not this host's)."""
        self.loopback_only = is_loopback(host)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        bound = self._runner.addresses[0]
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop following, close the subscription and the server."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.subscription.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _loopback_host_header(host: Any) -> bool:
    """Whether a request's Host header names this machine (name[:port])."""
    if not isinstance(host, str) or not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") and host.count(":") == 1 else host
    if name.startswith("[") and "]" in name:
        name = name[:name.index("]") + 1]
    return name.lower() in LOOPBACK_NAMES or is_loopback(name)
