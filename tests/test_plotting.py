"""The house style (``scencode.plotting``): one look per encoding, text inside the canvas, PNG+PDF."""

import itertools
import os
import subprocess
import sys

import pytest
import yaml
from helpers import REPO

from scencode import plotting
from scencode.plotting import EncodingStyles


def shipped_configurations() -> set[tuple[str, str]]:
    """Every (gene, expression) the shipped configs train, and the baselines they evaluate."""
    pairs = {("baseline", "pca"), ("baseline", "random")}
    for path in (REPO / "config").glob("*.yaml"):
        config = yaml.safe_load(path.read_text()) or {}
        for run in (config.get("pretrain") or {}).get("configurations", []):
            pairs.add((run["gene"], run["expression"]))
    return pairs


def look(styles: EncodingStyles, gene: str, expression: str) -> tuple:
    style = styles.gene(gene)
    return style.marker, style.filled, str(style.linestyle), style.hatch, styles.colour(expression)


def test_every_pair_of_shipped_configurations_looks_different():
    pairs = shipped_configurations()
    assert len(pairs) >= 10  # the paper's eight, the permuted control, autobin, the baselines
    styles = EncodingStyles(*zip(*pairs))
    for a, b in itertools.combinations(sorted(pairs), 2):
        assert look(styles, *a) != look(styles, *b), (a, b)
    # and the parts are distinct on their own: a gene encoding by shape and fill, an expression by colour
    genes = {g for g, _ in pairs}
    assert len({(styles.gene(g).marker, styles.gene(g).filled) for g in genes}) == len(genes)
    assert len({styles.gene(g).linestyle for g in genes}) == len(genes)
    expressions = {e for _, e in pairs}
    assert len({styles.colour(e) for e in expressions}) == len(expressions)


def test_every_built_in_encoding_has_a_style_of_its_own():
    from scencode.encodings import EXPRESSION_ENCODERS, GENE_ENCODERS

    assert set(GENE_ENCODERS) <= set(plotting.GENE_STYLES)
    assert set(EXPRESSION_ENCODERS) <= set(plotting.EXPRESSION_COLOURS)


def test_new_encodings_take_distinct_spare_styles_the_same_in_every_process():
    styles = EncodingStyles(["learned", "my_gene_a", "my_gene_b"], ["soft", "my_expr_a", "my_expr_b"])
    assert styles.colour("my_expr_a") != styles.colour("my_expr_b")
    assert styles.colour("my_expr_a") not in plotting.EXPRESSION_COLOURS.values()
    assert styles.gene("my_gene_a") != styles.gene("my_gene_b")
    code = "from scencode.plotting import EncodingStyles; print(EncodingStyles().colour('my_new_encoding'))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": s},
        ).stdout
        for s in ("1", "2")
    }
    assert len(seen) == 1


def test_layout_problems_finds_text_outside_the_canvas_and_crowded_tick_labels():
    fig, ax = plotting.figure(3, 2)
    ax.plot([0, 1], [0, 1])
    assert plotting.layout_problems(fig) == []
    fig.text(0.5, -0.2, "a footnote below the canvas")
    ax.set_xticks([0, 0.01, 0.02], ["a long label", "another long label", "a third"])
    problems = plotting.layout_problems(fig)
    assert any("a footnote below the canvas" in p and "leaves the canvas" in p for p in problems)
    assert any("overlap" in p for p in problems)
    fig2, ax2 = plotting.figure(3, 2)  # rotated labels: their boxes overlap but the text does not
    ax2.bar(range(4), [1, 2, 3, 4])
    ax2.set_xticks(range(4), [f"label {i}" for i in range(4)], rotation=60, ha="right", rotation_mode="anchor")
    assert plotting.layout_problems(fig2) == []


def test_save_writes_png_and_pdf_atomically(tmp_path):
    fig, ax = plotting.figure(2, 2)
    ax.plot([0, 1], [1, 0])
    paths = plotting.save(fig, tmp_path / "f.png")
    assert [p.name for p in paths] == ["f.png", "f.pdf"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]  # no temporaries left


@pytest.mark.parametrize("bad", ["-f.png"])
def test_an_output_named_like_an_option_is_refused(tmp_path, bad, monkeypatch):
    from scencode.errors import ScencodeError

    monkeypatch.chdir(tmp_path)
    fig, _ = plotting.figure(2, 2)
    with pytest.raises(ScencodeError):
        plotting.save(fig, bad)
