"""Inline SVG drawn on the server: line charts with axes, sparklines, stacked bars.

Plain functions that return SVG markup (every text escaped), so the dashboard needs no
JavaScript library and nothing is downloaded when a browser opens it: the State Server often
runs on a cluster network without internet access, and the page must work there and in a
restrictive Content-Security-Policy (no scripts at all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

Point = Sequence[float]


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 x 10^n) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("tick range must be finite")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = [first]
    while ticks[-1] < hi - 1e-9 * step:
        ticks.append(first + len(ticks) * step)
    return [round(t, 12) for t in ticks]


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as the tick step needs."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = hi - lo or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _polyline(points: list[tuple[float, float]], css: str) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline class="{escape(css)}" fill="none" points="{coords}"/>'


def line_chart(
    points: Sequence[Point],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    css: str = "curve",
    width: int = 560,
    height: int = 240,
    empty_text: str = "no data yet",
) -> str:
    """A line chart of ``points`` ([x, y] pairs) with axes, ticks, labels and a marked
    last point. ``y_range`` fixes the y axis (e.g. (0, 1) for accuracy)."""
    left, right, top, bottom = 58, 16, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    head = (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<text class="chart-title" x="{left}" y="18">{escape(title)}</text>'
    )
    labels = (
        f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{height - 6}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="axis-label" x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    frame = (
        f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none"/>'
    )
    if not points:
        note = (
            f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
            f'text-anchor="middle">{escape(empty_text)}</text>'
        )
        return head + frame + labels + note + "</svg>"
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs))
    y_ticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    sx = _scale(x_ticks[0], x_ticks[-1], left, left + plot_w)
    sy = _scale(y_ticks[0], y_ticks[-1], top + plot_h, top)
    grid = _grid(x_ticks, y_ticks, sx, sy, (left, top, plot_w, plot_h))
    pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True)]
    last_x, last_y = pts[-1]
    marker = (
        f'<circle class="{escape(css)} last" cx="{last_x:.1f}" cy="{last_y:.1f}" r="3.5">'
        f"<title>{escape(f'{x_label} {xs[-1]:g}: {y_label} {ys[-1]:g}')}</title></circle>"
    )
    return head + grid + frame + labels + _polyline(pts, css) + marker + "</svg>"


def _grid(x_ticks, y_ticks, sx, sy, box: tuple[float, float, float, float]) -> str:
    """Grid lines and tick labels of both axes."""
    left, top, plot_w, plot_h = box
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    parts = []
    for t in x_ticks:
        x = sx(t)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}"/>'
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
            f"{tick_label(t, x_step)}</text>"
        )
    for t in y_ticks:
        y = sy(t)
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{tick_label(t, y_step)}</text>"
        )
    return "".join(parts)


def thin(points: Sequence[Point], most: int) -> Sequence[Point]:
    """At most ``most`` evenly spaced points, the first and the last included."""
    if len(points) <= most or most < 2:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]


def sparkline(
    points: Sequence[Point], *, title: str, css: str = "spark", width: int = 90, height: int = 24
) -> str:
    """A small line without axes; the tooltip says the range and the latest value."""
    if not points:
        return '<span class="muted">-</span>'
    points = thin(points, width // 2)
    ys = [float(p[1]) for p in points]
    xs = [float(p[0]) for p in points]
    pad = 3.0
    sx = _scale(min(xs), max(xs), pad, width - pad)
    lo, hi = min(ys), max(ys)
    if hi == lo:
        lo, hi = lo - 1.0, hi + 1.0
    sy = _scale(lo, hi, height - pad, pad)
    pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True)]
    if len(pts) == 1:
        pts = [(pad, pts[0][1]), (width - pad, pts[0][1])]
    tip = f"{title}: min {min(ys):.4g}, max {max(ys):.4g}, latest {ys[-1]:.4g}"
    return (
        f'<svg class="sparkline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(tip)}"><title>{escape(tip)}</title>'
        + _polyline(pts, css)
        + f'<circle class="{escape(css)} last" cx="{pts[-1][0]:.1f}" cy="{pts[-1][1]:.1f}" '
        'r="2"/></svg>'
    )


def stacked_bar(
    segments: Sequence[tuple[str, float, str]], *, width: int = 120, height: int = 14
) -> str:
    """One horizontal bar split into ``(label, fraction, css class)`` segments."""
    total = sum(max(0.0, f) for _, f, _ in segments)
    if total <= 0:
        return '<span class="muted">-</span>'
    tip = ", ".join(f"{label} {f / total:.0%}" for label, f, _ in segments)
    parts, x = [], 0.0
    for label, fraction, css in segments:
        w = max(0.0, fraction) / total * width
        if w <= 0:
            continue
        parts.append(
            f'<rect class="{escape(css)}" x="{x:.1f}" y="0" width="{w:.1f}" height="{height}">'
            f"<title>{escape(f'{label} {fraction / total:.0%}')}</title></rect>"
        )
        x += w
    return (
        f'<svg class="bar" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(tip)}">' + "".join(parts) + "</svg>"
    )
