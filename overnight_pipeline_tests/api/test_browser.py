"""A real headless Chromium signs in through the form and reads the page, on a desktop and
on phones: no horizontal scrolling, the class bars drawn, axe-core finds nothing serious.

Screenshots are test artifacts, written to `.data/artifacts/browser/` (the README shows the
ones committed under docs/screenshots/).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from overnight_pipeline.settings import Settings
from overnight_pipeline.storage.freshness import mark_changed
from overnight_pipeline.storage.models import user_changes_table
from overnight_pipeline_tests.api.cdp import ROOT, Browser, BrowserTools, ensure_browser_tools
from overnight_pipeline_tests.api.conftest import FAST, token_for
from overnight_pipeline_tests.api.live import live_server
from overnight_pipeline_tests.support.stored_results import Planner

ARTIFACTS = ROOT / ".data/artifacts/browser"
# name: (width, height, a phone's layout viewport)
SCREENS = {"desktop": (1280, 900, False), "phone": (390, 844, True), "narrow": (320, 640, True)}


@pytest.fixture(scope="session")
def tools() -> BrowserTools:
    return ensure_browser_tools()


@pytest.fixture
def browser(tools: BrowserTools, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tools.chromium, tmp_path / "profile")
    yield b
    b.close()


def sign_in(browser: Browser, base: str, user: uuid.UUID) -> None:
    browser.navigate(f"{base}/")  # no cookie yet: the page sends us to the form
    assert browser.evaluate("location.pathname") == "/login"
    browser.type_into("#token", token_for(user))
    browser.submit("#login-form")
    assert browser.evaluate("location.pathname") == "/"


def shoot(browser: Browser, name: str, *, full_page: bool = True) -> bytes:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = browser.screenshot(ARTIFACTS / f"{name}.png", full_page=full_page)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000, name
    return png


def serious(violations: list[dict[str, object]]) -> list[dict[str, object]]:
    return [v for v in violations if v["impact"] in ("serious", "critical")]


def test_browser_logs_in_and_sees_fresh_and_stale_badges(
    browser: Browser,
    settings: Settings,
    new_user: Callable[..., Planner],
    cache: Callable[..., None],
    sync_redis: redis.Redis,
) -> None:
    fresh = new_user(hours_ago=3, seed=4)
    changed = new_user(hours_ago=3, seed=6)
    cache(fresh, changed)
    mark_changed(
        sync_redis,
        [changed.user_id],
        datetime.now(UTC) - timedelta(minutes=2),
        prefix=settings.cache_prefix,
    )
    stale = new_user(hours_ago=30, seed=5)
    with live_server(settings, FAST) as base:
        for name, user, badge in [
            ("fresh", fresh.user_id, "Fresh · generated 3 hours ago"),
            ("updating", changed.user_id, "Updating · your portfolio changed 2 minutes ago"),
            ("stale", stale.user_id, "Stale · generated 30 hours ago"),
            ("none", uuid.uuid4(), "No data yet"),
        ]:
            sign_in(browser, base, user)
            assert browser.evaluate("document.getElementById('freshness').textContent") == badge
            assert browser.evaluate("document.getElementById('freshness').className") == (
                f"badge {name}"
            )
            # The token lives in an HttpOnly cookie: page scripts cannot read it.
            assert "overnight_token" not in browser.evaluate("document.cookie")
            if name != "none":
                rows = browser.evaluate(
                    "document.querySelectorAll('#recommendations tbody tr').length"
                )
                planner = {"fresh": fresh, "updating": changed, "stale": stale}[name]
                assert rows == len(planner.recs.recommendations)
                assert browser.evaluate("document.querySelectorAll('.alloc .bar').length") == 3
            browser.submit("form.inline")  # sign out
            assert browser.evaluate("location.pathname") == "/login"


def test_the_longer_badges_of_a_change_fit_a_narrow_screen_and_pass_axe(
    browser: Browser,
    tools: BrowserTools,
    settings: Settings,
    new_user: Callable[..., Planner],
    cache: Callable[..., None],
    sync_redis: redis.Redis,
    pg_engine: Engine,
) -> None:
    """The two labels that say the inputs changed, the longest the badge has, on a 320 px
    phone: the badge wraps inside the screen rather than pushing the page sideways."""
    changed = new_user(hours_ago=3, seed=8)
    cache(changed)
    ago = datetime.now(UTC) - timedelta(minutes=2)
    mark_changed(sync_redis, [changed.user_id], ago, prefix=settings.cache_prefix)
    stale = new_user(hours_ago=30, seed=9)  # a day old: served from PostgreSQL
    with pg_engine.begin() as conn:
        conn.execute(
            user_changes_table.insert().values(
                user_id=stale.user_id, changed_at=ago, what=["contribution"]
            )
        )
    width, height, mobile = SCREENS["narrow"]
    browser.viewport(width, height, mobile=mobile)
    with live_server(settings, FAST) as base:
        for user, state, words in [
            (changed.user_id, "updating", "Updating · your portfolio changed 2 minutes ago"),
            (
                stale.user_id,
                "stale",
                "Stale · generated 30 hours ago · your portfolio changed 2 minutes ago",
            ),
        ]:
            sign_in(browser, base, user)
            assert browser.evaluate("document.getElementById('freshness').textContent") == words
            assert browser.evaluate("document.getElementById('freshness').className") == (
                f"badge {state}"
            )
            assert browser.evaluate(NO_SIDEWAYS_SCROLL), f"the {state} badge scrolls sideways"
            right = browser.evaluate(
                "document.getElementById('freshness').getBoundingClientRect().right"
            )
            assert right <= width, right
            assert serious(browser.audit(tools.axe_js)) == []
            browser.submit("form.inline")  # sign out


# Every bar and band: drawn (a box with width and height), inside the screen, not hidden.
BARS_DRAWN = """
[...document.querySelectorAll('.alloc')].map(row => {
  const box = sel => row.querySelector(sel).getBoundingClientRect();
  const track = box('.track'), bar = box('.bar'), band = box('.band');
  const shown = el => getComputedStyle(el).visibility === 'visible'
    && getComputedStyle(el).display !== 'none';
  return {name: row.dataset.class,
          track: track.width > 100 && track.height >= 8 && track.right <= innerWidth,
          bar: bar.width >= 2 && bar.height >= 8 && bar.right <= track.right + 1,
          band: band.width >= 2 && band.height >= 4 && band.right <= track.right + 1,
          shown: [...row.querySelectorAll('.track, .bar, .band')].every(shown)};
})
"""
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= innerWidth"


@pytest.mark.parametrize("screen", list(SCREENS))
def test_page_fits_the_screen_draws_the_bars_and_passes_axe(
    screen: str,
    browser: Browser,
    tools: BrowserTools,
    settings: Settings,
    new_user: Callable[..., Planner],
    cache: Callable[..., None],
) -> None:
    width, height, mobile = SCREENS[screen]
    user = new_user(hours_ago=17 / 60, seed=7)
    cache(user)
    browser.viewport(width, height, mobile=mobile)
    with live_server(settings, FAST) as base:
        browser.navigate(f"{base}/login")
        assert browser.evaluate("innerWidth") == width
        browser.type_into("#token", "not-a-token")
        browser.submit("#login-form")
        assert browser.evaluate("document.querySelector('[role=alert]').textContent").startswith(
            "That token does not work"
        )
        assert browser.evaluate(NO_SIDEWAYS_SCROLL), "the sign-in form scrolls sideways"
        assert serious(browser.audit(tools.axe_js)) == []
        if screen != "narrow":
            shoot(browser, f"login-error-{screen}")

        sign_in(browser, base, user.user_id)
        scroll = browser.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        assert scroll[0] <= scroll[1], f"the page is {scroll[0]} px wide on a {width} px screen"
        bars = browser.evaluate(BARS_DRAWN)
        assert [b["name"] for b in bars] == ["US Stocks", "Brazil", "Bonds"]
        for bar in bars:
            assert bar == {**bar, "track": True, "bar": True, "band": True, "shown": True}, bar
        # Every cell of every recommendation is on screen (none cut off at the right edge).
        cut = browser.evaluate(
            "[...document.querySelectorAll('#recommendations th, #recommendations td')]"
            ".filter(c => c.getBoundingClientRect().right > innerWidth + 0.5).length"
        )
        assert cut == 0
        badge_height = browser.evaluate("document.getElementById('freshness').offsetHeight")
        assert badge_height < 40, "the badge wraps into a tall pill"
        assert serious(browser.audit(tools.axe_js)) == []
        if screen != "narrow":
            shoot(browser, f"dashboard-{screen}")
            shoot(browser, f"dashboard-{screen}-first-screen", full_page=False)

        browser.submit("form.inline")  # sign out
        sign_in(browser, base, uuid.uuid4())  # a user with nothing yet
        assert browser.evaluate("document.getElementById('total-investable').textContent") == (
            "No contribution set yet"
        )
        assert browser.evaluate(NO_SIDEWAYS_SCROLL)
        assert serious(browser.audit(tools.axe_js)) == []
        if screen != "narrow":
            shoot(browser, f"dashboard-empty-{screen}")
