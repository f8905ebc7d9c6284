"""The app under a real uvicorn server on a loopback port, in a background thread (for the
schemathesis run and the browser test, which need real HTTP)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from dashboard_api.app import create_app
from dashboard_api.services import ApiOptions
from overnight_pipeline.settings import Settings
from overnight_pipeline_tests.api.netfaults import closed_port


@contextlib.contextmanager
def live_server(
    settings: Settings, options: ApiOptions, *, production: bool = False
) -> Iterator[str]:
    """Serve the app; yields its base URL and stops it (lifespan included) on exit.

    `production`: uvloop and httptools, as `overnight serve` runs it.
    """
    port = closed_port()
    config = uvicorn.Config(
        create_app(settings, options=options),
        host="127.0.0.1",
        port=port,
        loop="uvloop" if production else "asyncio",
        http="httptools" if production else "auto",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
