"""A bounded series for the dashboard's curves: at most ``max_points`` points, however long
the run (older points are averaged in pairs)."""

from __future__ import annotations

from array import array


class Series:
    """At most ``max_points`` (x, y) points of a growing series, evenly spread over all of it.

    Points are means of buckets of ``stride`` consecutive values; when the series is full,
    neighbouring buckets are averaged in pairs and ``stride`` doubles. The newest raw value
    is kept besides, so a curve always ends at the latest value.
    """

    __slots__ = ("max_points", "xs", "ys", "stride", "_sx", "_sy", "_n", "last")

    def __init__(self, max_points: int) -> None:
        if max_points < 3:
            raise ValueError("a series needs room for at least 3 points")
        self.max_points = max_points
        self.xs, self.ys = array("d"), array("d")
        self.stride = 1
        self._sx = self._sy = 0.0
        self._n = 0
        self.last: tuple[float, float] | None = None

    def add(self, x: float, y: float) -> None:
        self.last = (x, y)
        self._sx += x
        self._sy += y
        self._n += 1
        if self._n < self.stride:
            return
        self.xs.append(self._sx / self._n)
        self.ys.append(self._sy / self._n)
        self._sx = self._sy = 0.0
        self._n = 0
        if len(self.xs) >= self.max_points - 1:  # keep room for the newest raw point
            self._halve()

    def _halve(self) -> None:
        pairs = len(self.xs) // 2 * 2
        if pairs < len(self.xs):  # an odd bucket out: it becomes the pending half-bucket
            self._sx, self._sy = self.xs[-1] * self.stride, self.ys[-1] * self.stride
            self._n = self.stride
        self.xs = array("d", ((self.xs[i] + self.xs[i + 1]) / 2 for i in range(0, pairs, 2)))
        self.ys = array("d", ((self.ys[i] + self.ys[i + 1]) / 2 for i in range(0, pairs, 2)))
        self.stride *= 2

    def points(self) -> list[list[float]]:
        """The points, oldest first, ending with the newest raw value."""
        pts = [[sig6(x), sig6(y)] for x, y in zip(self.xs, self.ys, strict=True)]
        if self.last is not None:
            last = [sig6(self.last[0]), sig6(self.last[1])]
            if not pts or pts[-1] != last:
                pts.append(last)
        return pts

    def __len__(self) -> int:
        return len(self.points())


def sig6(value: float) -> float:
    """Six significant digits: plenty for a dashboard, and a small JSON."""
    return float(f"{value:.6g}")
