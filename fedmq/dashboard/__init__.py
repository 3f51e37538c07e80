"""`fedmq dashboard`: a local web page following a run live.

    state.py     RunState: events and queue samples folded into what the page shows (no I/O)
    server.py    Dashboard: follows `fedmq.events` (fedmq.eventstream) and polls the management
                 API (fedmq.management.list_queues) into a RunState; serves it with aiohttp:
                 GET / (static/index.html, app.js, app.css) and GET /api/state (JSON)
    cli.py       the `fedmq dashboard` command: options, start-up checks, signals
    static/      the page: self-contained (no CDN), polls /api/state, draws its own SVG
                 curves, and sets every text with textContent (event data is untrusted)
"""
