"""HTML rendering of the status page (no template engine: one small, escaped table)."""

from __future__ import annotations

from html import escape
from typing import Any

REFRESH_S = 2
_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
    "td,th{border:1px solid #999;padding:.25em .6em;text-align:right}"
    "tr.ready td{background:#dfd}tr.slowest td{font-weight:bold}"
)


def _ago(now: float, when: float | None) -> str:
    return "never" if when is None else f"{max(now - when, 0.0):.1f} s ago"


def _row(worker: dict[str, Any], now: float, slowest: int | None) -> str:
    classes = [
        name
        for name, on in (("ready", worker["ready"]), ("slowest", worker["rank"] == slowest))
        if on
    ]
    c_ms = f"{worker['c'] * 1000:.2f}" if worker["c"] > 0 else "unknown"
    cells = (
        worker["rank"],
        "-" if worker["round"] is None else worker["round"],
        worker["k"],
        c_ms,
        "yes" if worker["ready"] else ("after this batch" if worker.get("told") else "no"),
        _ago(now, worker["last_seen"]),
    )
    tds = "".join(f"<td>{escape(str(cell))}</td>" for cell in cells)
    return f'<tr class="{" ".join(classes)}">{tds}</tr>'


def render_status_html(snap: dict[str, Any]) -> str:
    """The self-refreshing page for a status snapshot (see ``Scheduler.snapshot``)."""
    now = snap["server_time"]
    rows = "".join(_row(w, now, snap["slowest"]) for w in snap["workers"])
    slowest = (
        "not known yet (some capability is unknown)"
        if snap["slowest"] is None
        else f"rank {snap['slowest']}"
    )
    state = (
        f"round {snap['round']}, {snap['num_workers']} workers, "
        f"epsilon {snap['epsilon']:g} s, slowest {slowest}"
        if snap["initialized"]
        else "not initialised (waiting for init)"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        f"<title>ESync State Server</title><style>{_STYLE}</style></head><body>"
        f"<h1>ESync State Server</h1><p>{escape(state)}; queue depth "
        f"{escape(str(snap.get('queue_depth', 0)))}, held requests "
        f"{escape(str(snap.get('held', 0)))}. "
        '<a href="/status.json">JSON</a></p>'
        "<table><thead><tr><th>rank</th><th>round</th><th>k</th><th>c (ms/batch)</th>"
        f"<th>ready</th><th>last seen</th></tr></thead><tbody>{rows}</tbody></table>"
        "</body></html>"
    )
