"""The house style of every figure scencode draws: one look per encoding (the same in every figure
and every run), one set of sizes and fonts, legends outside the data, each figure as PNG and PDF.

Encodings are styled by name, not by position in a run, so ``learned · soft`` looks the same in the
loss curves, the scaling figure and next year's rerun: every gene encoding has a marker, a fill,
a line style and a hatch; every expression encoding a colour (Okabe & Ito's colour-blind-safe
palette for the built-in ones). A configuration (gene × expression) is therefore one marker, fill,
line style and colour. An encoding a user registers later takes a spare style chosen from its name
(crc32, stable across processes; a clash between two new names goes to the next spare).
Torch-free on purpose: the figures are drawn from the tables alone.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from .atomic import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

HOUSE_STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.constrained_layout.use": True,  # every label, legend and note inside the canvas
    "savefig.dpi": 200,
    "pdf.fonttype": 42,  # TrueType in the PDF: text a journal's tools can edit
}


@dataclass(frozen=True)
class GeneStyle:
    marker: str
    filled: bool
    linestyle: str | tuple
    hatch: str


# gene encodings: shape and fill; open = no knowledge of the gene (a shuffled or random table)
GENE_STYLES = {
    "learned": GeneStyle("o", True, "-", ""),
    "esm2": GeneStyle("s", True, "--", "//"),
    "esm2_permuted": GeneStyle("D", False, "-.", "\\\\"),
    "random_frozen": GeneStyle("^", False, ":", ".."),
    "baseline": GeneStyle("X", True, (0, (1, 2)), "xx"),
}
SPARE_GENE_STYLES = [
    GeneStyle("v", True, (0, (5, 1, 1, 1, 1, 1)), "++"),
    GeneStyle("P", True, (0, (8, 2)), "--"),
    GeneStyle("h", False, (0, (3, 1, 1, 1)), "oo"),
    GeneStyle("<", False, (0, (1, 1)), "||"),
    GeneStyle(">", True, (0, (6, 2, 2, 2)), "**"),
]
# expression encodings: Okabe & Ito (2008); the baselines in greys
EXPRESSION_COLOURS = {
    "soft": "#009E73",
    "continuous": "#0072B2",
    "log": "#D55E00",
    "hard": "#CC79A7",
    "autobin": "#E69F00",
    "rank": "#56B4E9",
    "pca": "#555555",
    "random": "#AAAAAA",
}
SPARE_COLOURS = ["#F0E442", "#882255", "#44AA99", "#332288", "#999933", "#661100", "#000000"]
REFERENCE_COLOUR = "#777777"  # chance levels and reference tables
# the figure modules draw in their own processes (the scencode CLI): the style is theirs to set
plt.rcParams.update(HOUSE_STYLE)  # type: ignore[arg-type]  # the stubs type each key alone


def _pick(name: str, fixed: dict, spares: list, taken: set):
    """``name``'s fixed style, else a spare one from its crc32 (Python salts ``hash``), skipping
    spares another new name already took."""
    if name in fixed:
        return fixed[name]
    start = zlib.crc32(name.encode()) % len(spares)
    for i in range(len(spares)):
        style = spares[(start + i) % len(spares)]
        if style not in taken:
            taken.add(style)
            return style
    return spares[start]  # more new encodings than spares: shared, but still drawn


class EncodingStyles:
    """The look of every encoding named in a run (``genes``, ``expressions``): built-in names keep
    theirs; new ones share the spares deterministically (sorted, so one run's figures agree)."""

    def __init__(self, genes=(), expressions=()):
        taken_genes, taken_colours = set(), set()
        self.genes = {g: _pick(g, GENE_STYLES, SPARE_GENE_STYLES, taken_genes) for g in sorted(set(genes))}
        self.colours = {e: _pick(e, EXPRESSION_COLOURS, SPARE_COLOURS, taken_colours) for e in sorted(set(expressions))}

    @classmethod
    def of(cls, table) -> EncodingStyles:
        """From any table with ``gene_encoding`` and ``expression_encoding`` columns."""
        return cls(table.gene_encoding.dropna().unique(), table.expression_encoding.dropna().unique())

    def gene(self, name: str) -> GeneStyle:
        return self.genes.get(name) or _pick(name, GENE_STYLES, SPARE_GENE_STYLES, set())

    def colour(self, name: str) -> str:
        return self.colours.get(name) or _pick(name, EXPRESSION_COLOURS, SPARE_COLOURS, set())

    def point(self, gene: str, expression: str) -> dict:
        """Keyword arguments of ``scatter``/``errorbar``/``plot`` markers for a configuration."""
        style, colour = self.gene(gene), self.colour(expression)
        return {
            "marker": style.marker,
            "color": colour,
            "markerfacecolor": colour if style.filled else "white",
            "markeredgecolor": colour,
        }

    def line(self, gene: str, expression: str) -> dict:
        return {**self.point(gene, expression), "linestyle": self.gene(gene).linestyle}

    def legend_handles(self, genes, expressions) -> list[Line2D]:
        """One handle per expression encoding (its colour) and per gene encoding (its marker, fill
        and line style in black)."""
        handles = [
            Line2D([], [], color=self.colour(e), marker="s", linestyle="", label=e) for e in sorted(set(expressions))
        ]
        for g in sorted(set(genes)):
            style = self.gene(g)
            handles.append(
                Line2D(
                    [],
                    [],
                    color="black",
                    marker=style.marker,
                    markerfacecolor="black" if style.filled else "white",
                    linestyle=style.linestyle,  # type: ignore[arg-type]  # a dash tuple is a valid style
                    label=g,
                )
            )
        return handles


def figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    """``plt.subplots`` in the house style (``width``, ``height`` in inches)."""
    return plt.subplots(rows, cols, figsize=(width, height), **kwargs)


def legend_outside(ax, **kwargs):
    """A legend to the right of ``ax``, never over its data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def mark_missing(ax, x, missing) -> None:
    """Bar slots ``x`` with no value (``missing``, booleans) say so, instead of looking like zero."""
    for position, gone in zip(x, missing):
        if gone:
            ax.text(
                position,
                0.03,
                "not available",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
                color="#555555",
            )


def note(fig: Figure, text: str, colour: str = "#555555") -> None:
    """A footnote under the panels (kept inside the canvas by the layout)."""
    fig.supxlabel(text, fontsize=6, color=colour, wrap=True)


def caveat(fig: Figure, text: str) -> None:
    """A run that is not the study's setup (e.g. the demo: ``workflow``'s comparison caveat) says so
    at the top of the figure, in red, so that no figure is taken for the study's."""
    if text:
        fig.suptitle(text, color="firebrick", fontsize=7, wrap=True)


def save(fig: Figure, png: Path) -> list[Path]:
    """``fig`` as ``png`` and the PDF beside it, each written atomically; a figure whose text
    leaves the canvas or whose tick labels overlap is still written, with a warning naming it."""
    png = Path(png)
    for problem in layout_problems(fig):
        log.warning("%s: %s", png.name, problem)
    paths = []
    for path in dict.fromkeys((png, png.with_suffix(".pdf"))):  # a PDF asked for is written once
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, format=path.suffix[1:])
        paths.append(path)
    plt.close(fig)
    return paths


def _shown_tick_labels(axis) -> list[Text]:
    low, high = sorted(axis.get_view_interval())
    span = (high - low) * 1e-6
    labels = []
    for ticks, locs in (
        (axis.get_major_ticks(), axis.get_majorticklocs()),
        (axis.get_minor_ticks(), axis.get_minorticklocs()),
    ):
        for tick, loc in zip(ticks, locs):
            if low - span <= loc <= high + span and tick.label1.get_visible() and tick.label1.get_text():
                labels.append(tick.label1)
    return labels


def fig_dpi(text: Text) -> float:
    figure = text.get_figure()
    return float(figure.dpi) if figure is not None else 72.0


def _overlapping(labels: list[Text], renderer, horizontal: bool) -> list[str]:
    """Neighbouring tick labels that touch: unrotated ones by their boxes, rotated ones by the
    distance between their baselines (their boxes overlap when the text does not)."""
    boxes = sorted(
        ((t.get_window_extent(renderer), t) for t in labels), key=lambda bt: bt[0].x0 if horizontal else bt[0].y0
    )
    found = []
    for (a, ta), (b, tb) in zip(boxes, boxes[1:]):
        rotation = ta.get_rotation() % 180 if horizontal else (ta.get_rotation() - 90) % 180
        if rotation == 0:
            gap = b.x0 - a.x1 if horizontal else b.y0 - a.y1
        else:
            step = (b.x1 - a.x1) if horizontal else (b.y1 - a.y1)
            lines = max(ta.get_text().count("\n"), tb.get_text().count("\n")) + 1
            height = float(ta.get_fontsize()) * fig_dpi(ta) / 72 * lines
            gap = abs(step * math.sin(math.radians(rotation))) - height
        if gap < -0.5:
            found.append(f"tick labels {ta.get_text()!r} and {tb.get_text()!r} overlap")
    return found


def layout_problems(fig: Figure) -> list[str]:
    """Text that leaves the canvas, and overlapping tick labels, once ``fig`` is drawn."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)  # closed: no canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    bounds = fig.bbox
    problems: list[str] = []
    ticks: set[int] = set()
    for ax in fig.axes:
        for axis, horizontal in ((ax.xaxis, True), (ax.yaxis, False)):
            every = [tick.label1 for tick in axis.get_major_ticks() + axis.get_minor_ticks()]
            ticks.update(id(t) for t in every)  # checked below only where drawn
            if not (ax.axison and axis.get_visible()):
                continue
            shown = _shown_tick_labels(axis)
            problems += _overlapping(shown, renderer, horizontal)
            ticks.difference_update(id(t) for t in shown)
    for text in fig.findobj(Text):
        if id(text) in ticks or not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < bounds.x0 - 1 or box.y0 < bounds.y0 - 1 or box.x1 > bounds.x1 + 1 or box.y1 > bounds.y1 + 1:
            problems.append(f"text {text.get_text()[:40]!r} leaves the canvas")
    return problems
