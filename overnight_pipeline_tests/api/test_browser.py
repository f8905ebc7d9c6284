"""A real headless Chromium logs in through the form and reads the freshness badge."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overnight_pipeline.settings import Settings
from overnight_pipeline_tests.api.cdp import Browser, ensure_chromium
from overnight_pipeline_tests.api.conftest import FAST, token_for
from overnight_pipeline_tests.api.factories import Planner
from overnight_pipeline_tests.api.live import live_server


@pytest.fixture(scope="session")
def chromium() -> str:
    return ensure_chromium()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path / "profile")
    yield b
    b.close()


def test_browser_logs_in_and_sees_fresh_and_stale_badges(
    browser: Browser,
    settings: Settings,
    new_user: Callable[..., Planner],
    cache: Callable[..., None],
    tmp_path: Path,
) -> None:
    fresh = new_user(hours_ago=3, seed=4)
    cache(fresh)
    stale = new_user(hours_ago=30, seed=5)
    with live_server(settings, FAST) as base:
        shots: dict[str, bytes] = {}
        for name, user, badge in [
            ("fresh", fresh.user_id, "Fresh · generated 3 hours ago"),
            ("stale", stale.user_id, "Stale · generated 30 hours ago"),
            ("none", uuid.uuid4(), "No data yet"),
        ]:
            browser.navigate(f"{base}/")  # no cookie yet: the page sends us to the form
            assert browser.evaluate("location.pathname") == "/login"
            browser.type_into("#token", token_for(user))
            browser.submit("#login-form")
            assert browser.evaluate("location.pathname") == "/"
            assert browser.evaluate("document.getElementById('freshness').textContent") == badge
            assert browser.evaluate("document.getElementById('freshness').className") == (
                f"badge {name}"
            )
            # The token lives in an HttpOnly cookie: page scripts cannot read it.
            assert "overnight_token" not in browser.evaluate("document.cookie")
            shots[name] = browser.screenshot(tmp_path / f"dashboard-{name}.png")
            if name != "none":
                rows = browser.evaluate(
                    "document.querySelectorAll('#recommendations tbody tr').length"
                )
                planner = fresh if name == "fresh" else stale
                assert rows == len(planner.recs.recommendations)
                bars = browser.evaluate("document.querySelectorAll('.alloc .bar').length")
                assert bars == 3
            browser.submit("form.inline")  # sign out
            assert browser.evaluate("location.pathname") == "/login"
    for name, png in shots.items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
        assert (tmp_path / f"dashboard-{name}.png").stat().st_size == len(png)
