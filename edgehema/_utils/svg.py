"""Small inline-SVG plots for self-contained HTML reports (the rollout report, the verification
report): points, lines, a shaded band and labelled axes, with no plotting library on the device."""

from __future__ import annotations

import html
import math


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (m * step) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


class Plot:
    """One plot: data ranges grow with what is drawn; ``svg()`` renders it."""

    def __init__(self, title: str, xlabel: str = "", ylabel: str = "", width: int = 440, height: int = 280):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.w, self.h, self.m = width, height, 56
        self.right = 64  # room for the labels of horizontal lines
        self._items: list[tuple] = []
        self._x: list[float] = []
        self._y: list[float] = []

    def _extend(self, xs, ys) -> None:
        self._x += [float(x) for x in xs if x is not None and math.isfinite(x)]
        self._y += [float(y) for y in ys if y is not None and math.isfinite(y)]

    def points(self, xs, ys, colour: str = "#333") -> "Plot":
        pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        self._extend([p[0] for p in pts], [p[1] for p in pts])
        self._items.append(("points", pts, colour))
        return self

    def line(self, xs, ys, colour: str = "#06c", dash: str = "", label: str = "") -> "Plot":
        self._extend(xs, ys)
        self._items.append(("line", list(zip(xs, ys)), colour, dash, label))
        return self

    def hline(self, y: float, colour: str = "#c60", label: str = "", dash: str = "4 3") -> "Plot":
        self._extend([], [y])
        self._items.append(("hline", y, colour, dash, label))
        return self

    def band(self, xs, lo, hi, colour: str = "#06c") -> "Plot":
        self._extend(xs, list(lo) + list(hi))
        self._items.append(("band", list(xs), list(lo), list(hi), colour))
        return self

    def svg(self) -> str:
        if not self._x or not self._y:
            return f"<p>{html.escape(self.title)}: nothing to plot</p>"
        x0, x1 = min(self._x), max(self._x)
        y0, y1 = min(self._y), max(self._y)
        pad_x, pad_y = (x1 - x0) * 0.04 or abs(x0) * 0.05 or 1.0, (y1 - y0) * 0.06 or abs(y0) * 0.05 or 1.0
        x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
        w, h, m = self.w, self.h, self.m

        def X(v):
            return m + (v - x0) / (x1 - x0) * (w - m - self.right)

        def Y(v):
            return h - m + 10 - (v - y0) / (y1 - y0) * (h - 1.6 * m)

        e = html.escape
        out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' style='margin:4px;border:1px solid #ddd'>",
               f"<text x='{w / 2}' y='16' text-anchor='middle' font-size='13'>{e(self.title)}</text>",
               f"<text x='{w / 2}' y='{h - 6}' text-anchor='middle' font-size='11'>{e(self.xlabel)}</text>",
               f"<text x='11' y='{h / 2}' font-size='11' transform='rotate(-90 11 {h / 2})' text-anchor='middle'>"
               f"{e(self.ylabel)}</text>"]
        for t in _ticks(x0, x1):
            out.append(f"<text x='{X(t):.1f}' y='{h - m + 24}' font-size='9' text-anchor='middle'>{t:.4g}</text>")
        for t in _ticks(y0, y1):
            out.append(f"<line x1='{m - 3}' x2='{m}' y1='{Y(t):.1f}' y2='{Y(t):.1f}' stroke='#999'/>"
                       f"<text x='{m - 5}' y='{Y(t) + 3:.1f}' font-size='9' text-anchor='end'>{t:.4g}</text>")
        out.append(f"<rect x='{m}' y='{Y(y1):.1f}' width='{X(x1) - m:.1f}' height='{Y(y0) - Y(y1):.1f}' "
                   f"fill='none' stroke='#bbb'/>")
        for item in self._items:
            out.append(self._render(item, X, Y, x0, x1))
        out.append("</svg>")
        return "".join(out)

    def _render(self, item, X, Y, x0, x1) -> str:
        kind = item[0]
        e = html.escape
        if kind == "points":
            return "".join(f"<circle cx='{X(x):.1f}' cy='{Y(y):.1f}' r='2.6' fill='{item[2]}' fill-opacity='0.7'/>"
                           for x, y in item[1])
        if kind == "line":
            pts, colour, dash, label = item[1:]
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
            text = (f"<text x='{X(pts[-1][0]) - 4:.1f}' y='{Y(pts[-1][1]) - 5:.1f}' font-size='10' fill='{colour}' "
                    f"text-anchor='end'>{e(label)}</text>") if label and pts else ""
            return f"<polyline points='{d}' fill='none' stroke='{colour}' stroke-dasharray='{dash}'/>" + text
        if kind == "hline":
            y, colour, dash, label = item[1:]
            return (f"<line x1='{X(x0):.1f}' x2='{X(x1):.1f}' y1='{Y(y):.1f}' y2='{Y(y):.1f}' stroke='{colour}' "
                    f"stroke-dasharray='{dash}'/><text x='{X(x1) + 2:.1f}' y='{Y(y) + 3:.1f}' font-size='9' "
                    f"fill='{colour}'>{e(label)}</text>")
        xs, lo, hi, colour = item[1:]
        d = " ".join(f"{X(x):.1f},{Y(v):.1f}" for x, v in list(zip(xs, hi)) + list(zip(xs, lo))[::-1])
        return f"<polygon points='{d}' fill='{colour}' fill-opacity='0.12' stroke='none'/>"
