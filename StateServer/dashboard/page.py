"""The dashboard's HTML, built by plain functions from a snapshot of ``DashboardStore``.

No template engine and no JavaScript: the page is one escaped HTML document with inline SVG
(:mod:`StateServer.dashboard.svg`) that reloads itself with a meta refresh. Everything a
worker sent (host names above all) goes through :func:`html.escape`.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any
from urllib.parse import quote

import config

from .reports import FAILED, FINISHED, RUNNING, SHARES, STALE, STARTING
from .svg import line_chart, sparkline, stacked_bar

Snapshot = Mapping[str, Any]

STATE_WORDS = {
    RUNNING: "workers are reporting their rounds",
    FINISHED: "every worker reported its last round",
    FAILED: "the run failed",
    STALE: "no report for a while: the run may have hung or died",
    STARTING: "announced; no worker has reported yet",
}
EPSILON_HELP = (
    "Alg. 2 of the ESync paper: before each extra local step, a fast worker asks the State "
    "Server whether to compute another batch or to synchronise now. It is told to synchronise "
    "when its own time per batch plus the slack epsilon exceeds what the slowest worker still "
    "needs for its current batch. A larger slack stops fast workers earlier, so the slowest "
    "worker never waits for them; 0 lets them use all the time the slowest one needs."
)
STEPS_HELP = (
    "local iterations (batches) this worker computed in its latest round before it "
    "synchronised; in ESync fast workers compute several while the slowest computes one"
)
SLOWDOWN_HELP = "emulated slowdown: after each batch the worker waits (S - 1) x its compute time"
SHARE_HELP = (
    "share of this worker's time since it started: computing batches, communicating (KVStore "
    "push/pull and State Server requests, blocking on the others included), evaluating the "
    "test set (rank 0), and waiting for anything else"
)
ON_TIME_HELP = (
    "device emulation: share of this worker's batches computed by their emulated-device "
    "deadline (the rest overran it: the host was too slow to emulate the device)"
)
FIDELITY_HELP = (
    "device emulation: share of all workers' batches computed by their emulated-device "
    "deadline; below 100% the host could not keep up with the emulated devices"
)
SERVERS_HELP = (
    "bytes every worker pushed and pulled on each parameter server (MXNet's key partition); "
    "balance = smallest / largest, raise it with launch.py --bigarray-bound"
)
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 1.6em;color:#222;background:#fafafa}
h1{font-size:1.35em;margin:0 0 .4em}h1 .run{font-weight:normal;color:#555}
.badge{display:inline-block;padding:.1em .55em;border-radius:.3em;font-weight:bold;
 font-size:.85em;letter-spacing:.04em;color:#fff;vertical-align:middle}
.badge.running{background:#2e7d32}.badge.finished{background:#1565c0}
.badge.failed{background:#c62828}.badge.stale{background:#ef6c00}
.badge.starting{background:#757575}.badge.straggler{background:#6a1b9a}
.state-line{margin:.2em 0 .8em}.facts{display:flex;flex-wrap:wrap;gap:.5em;margin:0 0 1em}
.fact{background:#fff;border:1px solid #ddd;border-radius:.4em;padding:.35em .7em}
.fact dt{font-size:.78em;color:#666}.fact dd{margin:0;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1em;margin-bottom:1em}
.chart{background:#fff;border:1px solid #ddd;border-radius:.4em}
.chart .grid{stroke:#e4e4e4}.chart .plot{stroke:#999}.chart .tick{font-size:11px;fill:#555}
.chart .axis-label{font-size:12px;fill:#333}.chart .chart-title{font-size:13px;font-weight:600}
.chart .empty{fill:#888;font-style:italic}
.curve,.spark{stroke-width:2}.curve.acc{stroke:#2e7d32}.curve.loss{stroke:#c62828}
circle.curve.acc{fill:#2e7d32}circle.curve.loss{fill:#c62828}
.spark{stroke:#1565c0;stroke-width:1.5}circle.spark{fill:#1565c0}
.spark.spb{stroke:#6a1b9a}circle.spark.spb{fill:#6a1b9a}
table{border-collapse:collapse;background:#fff;font-size:.93em}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:right;vertical-align:middle}
th{background:#f0f0f0;font-size:.85em}td{white-space:nowrap}td.text{text-align:left}
tr.straggler td{background:#f6effa}tr.stale td{background:#fff3e0}
tr.failed td{background:#ffebee}
.cell{display:flex;align-items:center;gap:.4em;justify-content:flex-end}
.muted{color:#999}.err{white-space:normal;display:inline-block;max-width:24em}
abbr{text-decoration:underline dotted;cursor:help}
.seg-computing{fill:#2e7d32}.seg-communicating{fill:#1565c0}
.seg-evaluating{fill:#f9a825}.seg-waiting{fill:#bdbdbd}
.legend span{display:inline-block;margin-right:1em}
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em}
footer{margin-top:1em;color:#666;font-size:.85em}
"""
_SEG_COLOURS = {
    "computing": "#2e7d32",
    "communicating": "#1565c0",
    "evaluating": "#f9a825",
    "waiting": "#bdbdbd",
}


# --- formatting --------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 07 min``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_number(value: float | None, unit: str = "") -> str:
    """Three significant digits (thousands grouped above 1000); ``-`` when unknown."""
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def fmt_factor(value: float | None) -> str:
    return "-" if value is None else f"\N{MULTIPLICATION SIGN}{value:g}"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _abbr(text: str, help_text: str) -> str:
    return f'<abbr title="{_e(help_text)}">{_e(text)}</abbr>'


def badge(state: str) -> str:
    return f'<span class="badge {_e(state)}">{_e(state.upper())}</span>'


# --- the page ----------------------------------------------------------------------------


def render_dashboard(snap: Snapshot, refresh_s: int = config.DASHBOARD_REFRESH_S) -> str:
    """The whole self-refreshing page for a snapshot (``DashboardStore.snapshot``)."""
    if snap.get("run") is None:
        title = "ESync dashboard"
        body = (
            "<h1>ESync dashboard</h1><p>No run has reported progress yet. Workers report to "
            "<code>POST /progress/</code> when started with "
            "<code>--report-progress http://&lt;this server&gt;</code>.</p>"
        )
    else:
        title = f"{snap['state'].upper()} {snap['run']} - ESync dashboard"
        body = run_body(snap)
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s > 0 else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'{refresh}<meta name="viewport" content="width=device-width">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}"
        f"{footer(snap, refresh_s)}</body></html>"
    )


def run_body(snap: Snapshot) -> str:
    """Heading with the state, the run's facts, the curves and the worker table."""
    state = snap["state"]
    line = STATE_WORDS.get(state, "")
    if state == FAILED and snap.get("failed"):
        line = f"the run failed: {snap['failed']}"
    elif state == FAILED:
        failed = [w for w in snap["workers"] if w["state"] == FAILED]
        if failed:
            reason = failed[0].get("error") or "no reason given"
            line = f"the run failed: rank {failed[0]['rank']} reported {reason}"
    elif state == STALE:
        line = (
            f"no report for {fmt_duration(snap['silent_s'])} (threshold "
            f"{fmt_duration(config.PROGRESS_STALE_S)}): the run may have hung or died"
        )
    return (
        f'<h1>{badge(state)} Training run <span class="run">{_e(snap["run"])}</span></h1>'
        f'<p class="state-line" id="state" data-state="{_e(state)}">{_e(line)}</p>'
        + facts(snap)
        + charts(snap)
        + workers_table(snap)
    )


def facts(snap: Snapshot) -> str:
    """The run's numbers as a row of labelled boxes."""
    items = [
        (_e("mode"), _e(snap.get("mode") or "-")),
        (_e("workers reporting"), _e(f"{snap['reporting']} of {snap.get('num_workers') or '?'}")),
        (_e("elapsed"), _e(fmt_duration(snap.get("elapsed_s")))),
        (_e("time left (estimate)"), _eta(snap)),
        (_e("rounds/s per worker"), _e(fmt_number(snap.get("rounds_per_s")))),
        (_e("samples/s (all workers)"), _e(fmt_number(snap.get("samples_per_s")))),
        (_e("latest test accuracy"), _e(_percent(snap.get("test_acc")))),
        (_e("straggler"), _straggler(snap)),
    ]
    if snap.get("epsilon") is not None:
        label = _abbr("slack \N{GREEK SMALL LETTER EPSILON}", EPSILON_HELP)
        items.append((label, _e(f"{snap['epsilon']:g} s")))
    if snap.get("fidelity") is not None:
        label = _abbr("fidelity", FIDELITY_HELP)
        items.append((label, _e(f"{_percent(snap['fidelity'])} of batches on time")))
    if len(snap.get("server_bytes") or []) > 1:
        per = ", ".join(f"{b / 1e6:,.1f}" for b in snap["server_bytes"])
        label = _abbr("MB per parameter server", SERVERS_HELP)
        items.append((label, _e(f"{per} (balance {snap['server_balance']:.2f})")))
    if snap.get("dropped"):
        items.append((_e("reports lost"), _e(snap["dropped"])))
    boxes = "".join(
        f'<div class="fact"><dt>{label}</dt><dd>{value}</dd></div>' for label, value in items
    )
    return f'<dl class="facts">{boxes}</dl>'


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _whole_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _eta(snap: Snapshot) -> str:
    if snap.get("eta_s") is not None:
        return _e(fmt_duration(snap["eta_s"]))
    if snap["state"] != RUNNING:
        return "-"
    return _abbr("-", "unknown: the workers report neither --max-time nor --rounds")


def _straggler(snap: Snapshot) -> str:
    rank = snap.get("straggler")
    worker = next((w for w in snap["workers"] if w["rank"] == rank), None)
    if worker is None:
        return "-"
    return _e(
        f"rank {rank} ({worker['host']}, {worker['device']}): "
        f"{fmt_number(worker['sec_per_batch'], 's')} per batch"
    )


def charts(snap: Snapshot) -> str:
    """Test accuracy and test loss over training time (rank 0's evaluations)."""
    note = "no evaluation yet (rank 0 evaluates every -e rounds or --eval-interval s)"
    loss = snap.get("loss") or []
    loss_top = max((p[1] for p in loss), default=1.0)
    acc_svg = line_chart(
        snap.get("accuracy") or [],
        title="Test accuracy (rank 0's evaluations)",
        x_label="training time (s)",
        y_label="test accuracy",
        y_range=(0.0, 1.0),
        css="curve acc",
        empty_text=note,
    )
    loss_svg = line_chart(
        loss,
        title="Test loss (mean cross-entropy)",
        x_label="training time (s)",
        y_label="test loss",
        y_range=(0.0, loss_top if loss_top > 0 else 1.0),
        css="curve loss",
        empty_text=note,
    )
    return f'<div class="charts">{acc_svg}{loss_svg}</div>'


def workers_table(snap: Snapshot) -> str:
    """One row per worker, in rank order, with a legend of the time split."""
    head = "".join(
        f"<th>{cell}</th>"
        for cell in (
            "rank",
            "host",
            "device",
            _abbr("slowdown", SLOWDOWN_HELP),
            "state",
            "rounds",
            _abbr("local steps this round", STEPS_HELP) + "<br>(and per round over time)",
            "seconds per batch<br>(and over time)",
            _abbr("on time", ON_TIME_HELP),
            _abbr("where the time goes", SHARE_HELP),
            "samples/s",
            "last seen",
        )
    )
    rows = "".join(worker_row(w, snap.get("straggler")) for w in snap["workers"])
    if not rows:
        rows = '<tr><td class="text muted" colspan="12">no worker has reported yet</td></tr>'
    legend = "".join(
        f'<span><i style="background:{_SEG_COLOURS[label]}"></i>{_e(label)}</span>'
        for label, _ in SHARES
    )
    return (
        f'<table id="workers"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        f'<p class="legend">{legend}</p>'
    )


def worker_row(w: Mapping[str, Any], straggler: int | None) -> str:
    """One worker's row (``w``: an entry of the snapshot's ``workers``)."""
    classes = [w["state"]]
    state = badge(w["state"])
    if w.get("stale"):
        classes.append("stale")
        state += " " + badge(STALE)
    if w["rank"] == straggler:
        classes.append("straggler")
        state += " " + badge("straggler")
    if w.get("error"):
        state += f'<br><span class="muted err">{_e(w["error"])}</span>'
    steps = sparkline(w["steps_series"], title="local steps per round", css="spark")
    spb = sparkline(w["sec_per_batch_series"], title="seconds per batch", css="spark spb")
    shares = w.get("shares") or {}
    bar = stacked_bar([(label, shares.get(label, 0.0), f"seg-{label}") for label, _ in SHARES])
    computing = shares.get("computing")
    cells = (
        _e(w["rank"]),
        f'<td class="text host">{_e(w["host"])}</td>',
        f'<td class="text">{_e(w["device"])}</td>',
        _e(fmt_factor(w.get("slowdown"))),
        f'<td class="text">{state}</td>',
        _e(w["round"]),
        f'<div class="cell">{_e(_or_dash(w.get("local_steps")))}{steps}</div>',
        f'<div class="cell">{_e(fmt_number(w.get("sec_per_batch"), "s"))}{spb}</div>',
        f'<td class="on-time">{_e(_percent(w.get("on_time")))}</td>',
        f'<div class="cell">{bar}<span>{_e(_whole_percent(computing))} computing</span></div>',
        _e(fmt_number(w.get("samples_per_s"))),
        _e(f"{fmt_duration(w.get('seen_ago_s'))} ago"),
    )
    tds = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
    return f'<tr class="{_e(" ".join(classes))}" data-rank="{_e(w["rank"])}">{tds}</tr>'


def _or_dash(value: object) -> object:
    return "-" if value is None else value


def footer(snap: Snapshot, refresh_s: int) -> str:
    """Refresh note, the JSON twin, and links to the other runs the server keeps."""
    here = snap.get("run")
    others = [r for r in snap.get("runs", []) if r["run"] != here]
    links = ", ".join(
        f'<a href="/dashboard/?run={quote(r["run"], safe="")}">{_e(r["run"])}</a> '
        f"({_e(r['state'])})"
        for r in others
    )
    query = f"?run={quote(here, safe='')}" if here else ""
    refresh = f"This page reloads every {int(refresh_s)} s. " if refresh_s > 0 else ""
    return (
        f"<footer>{refresh}Data as JSON: "
        f'<a href="/dashboard.json{_e(query)}">/dashboard.json{_e(query)}</a>; Alg. 2 state: '
        '<a href="/status/">/status/</a>.'
        + (f" Other runs: {links}." if links else "")
        + "</footer>"
    )
