"""Open the suite's HTML pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright from PyPI)
and report what a reader would get: console errors, every request the page made, whether each plot container
holds a drawn plot, and the numbers of the page's tables.

    python -m tests.browser screenshot RUN_DIR/report.html docs/images/report.png [--height 1500]

Playwright's own browser download is not used: the system Chromium is (``BRATS_CHROMIUM`` or the usual paths).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
PLOT_TIMEOUT_MS = 60_000


def find_chromium() -> str | None:
    """The Chromium to drive: ``$BRATS_CHROMIUM``, else the first of :data:`CHROMIUM_PATHS` or ``chromium`` on PATH."""
    for candidate in (os.environ.get("BRATS_CHROMIUM"), *CHROMIUM_PATHS, shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_browser() -> str | None:
    """Why the browser checks cannot run here (None when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -r requirements-dev.txt)"
    if find_chromium() is None:
        return ("no Chromium found (apt-get install chromium, or set BRATS_CHROMIUM to a Chromium/Chrome binary); "
                "the browser checks need one")
    return None


@dataclass
class PageCheck:
    """What happened when a page was opened and its scripts ran."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)

    @property
    def external_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


# Each plot container: plotly's state after drawing, the colours its traces were drawn with (for the pixel
# checks), the SVG shapes drawn for each trace, and the data it plots.
PLOTS_JS = """() => { TRACE_MARKS_FN; return [...document.querySelectorAll('div.plotly-graph-div')].map(div => {
  const full = div._fullData || [];
  // the colours a trace is drawn with: its markers, their outline where it has a width, its line
  const colors = full.map(t => [t.marker && t.marker.color,
                                t.marker && t.marker.line && t.marker.line.width > 0 && t.marker.line.color,
                                t.line && t.line.width > 0 && t.line.color].filter(c => typeof c === 'string'));
  return {
    id: div.id, drawn: div.classList.contains('js-plotly-plot') && !!div._fullLayout,
    n_data: (div.data || []).length, n_full: full.length,
    traces: full.map((t, i) => ({name: t.name, type: t.type, visible: t.visible, mode: t.mode || '',
                                 n: (t.x || t.y || []).length, colors: colors[i],
                                 x: Array.from(t.x || []), y: Array.from(t.y || []), z: Array.from(t.z || [])})),
    svg_marks: div.querySelectorAll('.scatterlayer .trace path, .boxlayer .trace path').length,
    gl_canvases: div.querySelectorAll('.gl-container canvas, canvas.gl-canvas').length,
    trace_marks: traceMarks(div, full.length),
  };
})}"""

# Per full trace (by index): the SVG shapes plotly drew for it in the plot area (not the legend): the paths of
# its trace group (points, lines, boxes) with a non-empty path and a box that intersects its subplot. WebGL traces
# have none (see the isolated screenshots below).
TRACE_MARKS_JS = """function traceMarks(div, n) {
  const marks = new Array(n).fill(0);
  for (const g of div.querySelectorAll('.cartesianlayer g.trace')) {
    const cd = g.__data__;
    const trace = cd && cd[0] && cd[0].trace;
    if (!trace || !(trace.index >= 0 && trace.index < n)) continue;
    const sub = g.closest('g.subplot');
    const bg = sub && sub.querySelector('.bglayer rect, .plotbg rect');
    const area = (bg || sub || div).getBoundingClientRect();
    for (const path of g.querySelectorAll('path')) {
      const d = path.getAttribute('d') || '';
      if (!d || d === 'M0,0Z' || /NaN/.test(d)) continue;
      const r = path.getBoundingClientRect();
      if (r.width + r.height <= 0) continue;
      if (r.right < area.left || r.left > area.right || r.bottom < area.top || r.top > area.bottom) continue;
      if (parseFloat(getComputedStyle(path).opacity) === 0) continue;
      marks[trace.index] += 1;
    }
  }
  return marks;
}"""

# Show trace i alone (i = -1: none), without the legend, so that a screenshot holds what that trace drew and no
# legend swatch or other trace of the same colour.
ISOLATE_JS = """async ([id, i]) => {
  const div = document.getElementById(id);
  await Plotly.update(div, {visible: div.data.map((_, j) => j === i)}, {showlegend: false});
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
}"""

# Every table row that says which CSV it shows (data-src on its table, data-key on the row), with its values.
TABLES_JS = """() => [...document.querySelectorAll('table[data-src]')].map(table => ({
  id: table.dataset.table, src: table.dataset.src,
  rows: [...table.querySelectorAll('tbody tr')].map(tr => ({
    key: JSON.parse(tr.dataset.key || '{}'),
    values: [...tr.querySelectorAll('span[data-col]')].map(s => ({
      col: s.dataset.col, value: s.dataset.value, kind: s.classList.contains('num') ? 'num' : s.dataset.kind,
      fmt: s.dataset.fmt || '', scale: s.dataset.scale || '1', text: s.textContent}))}))}))"""


def _colour_counts(png: bytes, colors: list[str], tolerance: int = 40) -> dict[str, int]:
    """How many pixels of the picture are within ``tolerance`` of each colour (``#rrggbb`` or ``rgb(r, g, b)``)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32).reshape(-1, 3)
    counts = {}
    for color in colors:
        rgb = _parse_color(color)
        if rgb is None:
            continue
        counts[color] = int((np.abs(pixels - np.array(rgb)).max(axis=1) <= tolerance).sum())
    return counts


def _parse_color(color: str) -> tuple[int, int, int] | None:
    color = color.strip().lower()
    if color.startswith("#") and len(color) == 4:  # #rgb
        color = "#" + "".join(ch * 2 for ch in color[1:])
    if color.startswith("#") and len(color) == 7:
        return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    if color.startswith("rgb"):
        parts = color[color.index("(") + 1:color.index(")")].split(",")
        return tuple(int(float(p)) for p in parts[:3])  # type: ignore[return-value]
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a fresh profile in a temporary folder), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise RuntimeError(missing_browser() or "no Chromium")
    with tempfile.TemporaryDirectory(prefix="brats-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=executable, headless=True,
                                                       args=LAUNCH_ARGS, viewport={"width": 1280, "height": 900},
                                                       device_scale_factor=1)
        try:
            yield context
        finally:
            context.close()


def check_page(context: Any, path: str | Path) -> PageCheck:
    """Open ``path`` (a local HTML file), wait until every plot is drawn, and collect what the page did.

    Per trace: ``marks``, its SVG shapes in the plot area, and ``own_pixels``, how many more pixels of its colours
    the plot shows with that trace alone (no legend) than with no trace at all: what the trace itself drew, not a
    legend swatch or another trace of the same colour. (The page's plots are left showing their last trace.)"""
    url = Path(path).resolve().as_uri()
    result = PageCheck(url)
    page = context.new_page()
    page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: result.console_errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: result.requests.append(r.url))
    try:
        page.goto(url, wait_until="load")
        page.wait_for_function("() => [...document.querySelectorAll('div.plotly-graph-div')].every("
                               "d => d.classList.contains('js-plotly-plot') && d._fullLayout)",
                               timeout=PLOT_TIMEOUT_MS)
        page.wait_for_timeout(500)  # WebGL scenes draw on the next animation frames
        plots = page.evaluate(PLOTS_JS.replace("TRACE_MARKS_FN", TRACE_MARKS_JS))
        result.tables = page.evaluate(TABLES_JS)
        for plot in plots:
            element = page.locator(f'[id="{plot["id"]}"]')
            colors = sorted({c for t in plot["traces"] for c in t["colors"]})
            plot["pixels"] = _colour_counts(element.screenshot(), colors)
            # each trace alone on the screen, against the plot with no trace (axes, titles): its own pixels
            page.evaluate(ISOLATE_JS, [plot["id"], -1])
            empty = _colour_counts(element.screenshot(), colors)
            for i, trace in enumerate(plot["traces"]):
                page.evaluate(ISOLATE_JS, [plot["id"], i])
                alone = _colour_counts(element.screenshot(), trace["colors"])
                trace["own_pixels"] = max((alone[c] - empty.get(c, 0) for c in alone), default=0)
                trace["marks"] = plot["trace_marks"][i]
        result.plots = plots
    finally:
        page.close()
    return result


# ----------------------------------------------------------------------------- the numbers of report.html's tables
class _TableParser(HTMLParser):
    """The same structure as :data:`TABLES_JS`, from the HTML text (no browser)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self._span: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table" and "data-src" in a:
            self.tables.append({"id": a.get("data-table", ""), "src": a["data-src"], "rows": []})
        elif tag == "tr" and self.tables and "data-key" in a:
            self.tables[-1]["rows"].append({"key": json.loads(a["data-key"]), "values": []})
        elif tag == "span" and "data-col" in a and self.tables and self.tables[-1]["rows"]:
            kind = "num" if "num" in a.get("class", "").split() else a.get("data-kind", "")
            self._span = {"col": a["data-col"], "value": a.get("data-value", ""), "kind": kind,
                          "fmt": a.get("data-fmt", ""), "scale": a.get("data-scale", "1"), "text": ""}
            self.tables[-1]["rows"][-1]["values"].append(self._span)

    def handle_data(self, data: str) -> None:
        if self._span is not None:
            self._span["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._span = None


def parse_tables(text: str) -> list[dict[str, Any]]:
    parser = _TableParser()
    parser.feed(text)
    return parser.tables


def _norm(value: Any) -> str:
    """A CSV cell as the report writes a key or a text value (24.0 -> "24", NaN -> "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def table_mismatches(tables: list[dict[str, Any]], folder: str | Path) -> list[str]:
    """Every shown number or text that differs from its CSV cell, and every CSV row a table leaves out."""
    import pandas as pd

    folder, problems = Path(folder), []
    for table in tables:
        csv = pd.read_csv(folder / table["src"])
        shown = set()
        for row in table["rows"]:
            key = row["key"]
            mask = pd.Series(True, index=csv.index)
            for column, value in key.items():
                mask &= csv[column].map(_norm) == value
            if int(mask.sum()) != 1:
                problems.append(f"{table['src']}: {int(mask.sum())} rows match {key}")
                continue
            shown.add(json.dumps(key, sort_keys=True))
            record = csv[mask].iloc[0]
            for v in row["values"]:
                where = f"{table['src']} {key} {v['col']}"
                if v["col"] not in record.index:
                    problems.append(f"{where}: no such column")
                    continue
                actual = record[v["col"]]
                if v["kind"] == "num":
                    if pd.isna(actual):
                        if (v["value"], v["text"]) != ("nan", "–"):
                            problems.append(f"{where}: shows {v['text']!r} ({v['value']}) for an empty cell")
                        continue
                    expected = format(float(actual) / float(v["scale"]), v["fmt"])
                    if not math.isclose(float(v["value"]), float(actual), rel_tol=1e-12, abs_tol=1e-300) or \
                            v["text"].strip() != expected:
                        problems.append(f"{where}: shows {v['text']!r} ({v['value']}), the CSV has {actual!r} "
                                        f"({expected})")
                elif v["kind"] == "flag":
                    cell = _norm(actual)
                    text = {"True": "yes", "False": "no"}.get(cell, "–")
                    if (v["value"], v["text"].strip()) != (cell, text):
                        problems.append(f"{where}: shows {v['text']!r} ({v['value']!r}), the CSV has {cell!r}")
                elif (v["value"], v["text"]) != (_norm(actual), _norm(actual)):
                    problems.append(f"{where}: shows {v['text']!r}, the CSV has {_norm(actual)!r}")
        keys = list(table["rows"][0]["key"]) if table["rows"] else []
        if keys:
            every = {json.dumps({k: _norm(r[k]) for k in keys}, sort_keys=True) for _, r in csv.iterrows()}
            if every - shown:
                problems.append(f"{table['src']}: rows not shown: {sorted(every - shown)}")
    return problems


def screenshot(path: str | Path, out: str | Path, width: int = 1280, height: int = 1500) -> Path:
    """A PNG of the top ``height`` pixels of the page at ``path`` (the README's picture of the report)."""
    with chromium() as context:
        page = context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        page.goto(Path(path).resolve().as_uri(), wait_until="load")
        page.wait_for_timeout(1000)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.browser", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    shot = sub.add_parser("screenshot", help="a PNG of the top of a page")
    shot.add_argument("page")
    shot.add_argument("out")
    shot.add_argument("--width", type=int, default=1280)
    shot.add_argument("--height", type=int, default=1500)
    args = parser.parse_args(argv)
    why = missing_browser()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    print(screenshot(args.page, args.out, args.width, args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
