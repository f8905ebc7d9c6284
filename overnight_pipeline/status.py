"""`overnight status`: each market's readiness for its session, as a table or JSON
(BEHAVIOUR §10; the 4 a.m. command). The judging is `core.readiness`'s, the facts are the
job-run rows (`storage.job_runs.market_readiness`), as for the `market_readiness` sensor."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from overnight_pipeline.core.readiness import NO_SESSION, Readiness, format_margin


def everything_ready(judged: Sequence[Readiness]) -> bool:
    """Every market with a session that day is ready (or ready-partial); a market whose open
    has not come yet (pending, running) is not."""
    return all(r.ok for r in judged)


def as_json(judged: Sequence[Readiness], *, now: datetime, day: str | None) -> str:
    def stamp(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    markets: list[dict[str, Any]] = [
        {
            "market": r.market,
            "session": r.session.isoformat(),
            "state": r.state,
            "ok": r.ok,
            "open_local": stamp(r.deadline_local),
            "open_utc": stamp(r.deadline),
            "finished_at": stamp(r.finished_at),
            "margin_seconds": None if r.margin is None else int(r.margin.total_seconds()),
            "margin": format_margin(r.margin),
            "users_ok": r.users_ok,
            "users_failed": r.users_failed,
            "run_id": r.run_id,
            "detail": r.detail or ("the exchange is closed" if r.state == NO_SESSION else ""),
        }
        for r in judged
    ]
    return json.dumps(
        {
            "as_of": now.isoformat(),
            "date": day,
            "ready": everything_ready(judged),
            "markets": markets,
        },
        indent=2,
    )


def _short_margin(r: Readiness) -> str:
    if r.margin is None:
        return "-"
    seconds = int(r.margin.total_seconds())
    hours, minutes = divmod(abs(seconds) // 60, 60)
    sign = "+" if seconds >= 0 else "-"
    return f"{sign}{hours}h{minutes:02d}m" if hours else f"{sign}{minutes}m"


def as_table(judged: Sequence[Readiness], *, now: datetime) -> str:
    header = (
        "market",
        "session",
        "opens (local)",
        "opens (UTC)",
        "state",
        "finished (UTC)",
        "margin",
        "users ok/failed",
        "run id",
        "detail",
    )
    rows = [header]
    for r in judged:
        users = "-" if r.users_ok is None else f"{r.users_ok}/{r.users_failed or 0}"
        rows.append(
            (
                r.market,
                r.session.isoformat(),
                f"{r.deadline_local:%H:%M %Z}" if r.deadline_local else "-",
                f"{r.deadline:%Y-%m-%d %H:%M}" if r.deadline else "-",
                r.state,
                f"{r.finished_at:%Y-%m-%d %H:%M}" if r.finished_at else "-",
                _short_margin(r),
                users,
                r.run_id or "-",
                r.detail or ("the exchange is closed" if r.state == NO_SESSION else "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]
    verdict = "every market ready" if everything_ready(judged) else "NOT every market ready"
    return "\n".join([*lines, "", f"as of {now:%Y-%m-%d %H:%M} UTC: {verdict}"])
