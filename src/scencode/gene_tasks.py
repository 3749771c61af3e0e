"""The field's gene tasks: the binary gene classifications every gene-embedding paper reports
(Geneformer's dosage-sensitive vs insensitive transcription factors, bivalent vs non-methylated
promoters, long- vs short-range transcription factors), scored by ``gene_probes`` with the field's
metric (AUROC, 5-fold, logistic regression and kNN) beside macro F1, next to published anchors.

The labels are Geneformer's example fine-tuning inputs (Theodoris et al., Nature 2023; the
dosage-sensitive set curated by Ni et al. 2019 from ExAC pLI and HIPred), Apache-2.0 on the Hugging
Face Hub. They are downloaded, not shipped (no redistributable copy is available offline to check),
from URLs pinned to a commit of their repository, so the content cannot change under a run; a
``sha256`` in the config is checked too, and the digest of every download is logged. Pickled label
files are read with an unpickler that builds only dicts, lists, sets and strings: a pickle is code,
and one from the network must not run any.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .atomic import OutputFile
from .errors import ScencodeError

log = logging.getLogger(__name__)
GENEFORMER = "https://huggingface.co/ctheodoris/Geneformer/resolve/0710c4466f0b2c9e570926cee313fcfe6a7ce60c"
GENECORPUS = (
    "https://huggingface.co/datasets/ctheodoris/Genecorpus-30M/resolve/7d72aa3d109cd190970ba951e87e04d0a12568d5"
)
LICENCE = "Apache-2.0 (Geneformer / Genecorpus-30M on the Hugging Face Hub)"


@dataclass(frozen=True)
class GeneTask:
    """One binary gene task: where its labels come from and what the field reports on it."""

    url: str
    format: str  # "columns": a CSV with one column of Ensembl ids per class; "pickle": {class: [ids]}
    source: str
    # published AUROC on this task: (who, value, how it was obtained; not scencode's protocol)
    anchors: tuple[tuple[str, float, str], ...] = field(default=())


FIELD_TASKS = {
    "dosage_sensitive_tfs": GeneTask(
        f"{GENEFORMER}/examples/example_input_files/dosage_sens_tf_labels.csv",
        "columns",
        "Ni et al. 2019 via Theodoris et al. 2023 (Geneformer), dosage-sensitive vs insensitive TFs",
        (
            ("GenePT", 0.89, "GenePT (Chen & Zou 2024): GPT-3.5 gene embeddings, cross-validated classifier"),
            ("Geneformer", 0.91, "Theodoris et al. 2023: Geneformer fine-tuned on ~10k cells, not a frozen probe"),
        ),
    ),
    "bivalent_vs_non_methylated": GeneTask(
        f"{GENECORPUS}/example_input_files/gene_classification/bivalent_promoters/bivalent_vs_no_methyl.pickle",
        "pickle",
        "Theodoris et al. 2023 (Geneformer), bivalent vs non-methylated promoters in ESCs",
    ),
    "long_vs_short_range_tfs": GeneTask(
        f"{GENECORPUS}/example_input_files/gene_classification/tf_regulatory_range/tf_regulatory_range.pickle",
        "pickle",
        "Theodoris et al. 2023 (Geneformer), long- vs short-range transcription factors",
    ),
}


def anchor_rows(name: str) -> list[dict]:
    """The published AUROCs of task ``name`` as rows of the gene-probe table (gene encoding
    ``published``; each note says how the number was obtained, which is not scencode's protocol)."""
    return [
        {
            "configuration": f"published-{who}",
            "gene_encoding": "published",
            "expression_encoding": who,
            "seed": -1,
            "dataset": "genes",
            "metric": "published_auroc",
            "group": f"gene_probe_task_{name}",
            "value": value,
            "note": how,
        }
        for who, value, how in task(name).anchors
    ]


def task(name: str) -> GeneTask:
    if name not in FIELD_TASKS:
        raise ScencodeError(f"unknown gene task {name!r}; known: {', '.join(FIELD_TASKS)}")
    return FIELD_TASKS[name]


class _LabelsOnly(pickle.Unpickler):
    """Builds dicts, lists, tuples, sets and strings; any class or function in the pickle is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"the labels pickle asks for {module}.{name}: only plain data is read")


def read_labels(path: str | Path, name: str) -> pd.Series:
    """gene id → class of task ``name`` from its label file; a gene in two classes is left out."""
    path, spec = Path(path), task(name)
    try:
        data = path.read_bytes()
        if spec.format == "columns":
            table = pd.read_csv(io.BytesIO(data), dtype=str)
            classes = {column: table[column].dropna().str.strip().tolist() for column in table.columns}
        else:
            classes = _LabelsOnly(io.BytesIO(data)).load()
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, pd.errors.ParserError) as exc:
        raise ScencodeError(f"not a readable {name} label file ({' '.join(str(exc).split())[:200]})", path) from None
    if (
        not isinstance(classes, dict)
        or len(classes) != 2
        or not all(isinstance(v, list | set | tuple) for v in classes.values())
    ):
        raise ScencodeError(f"{name} labels must be two classes of gene ids, got {type(classes).__name__}", path)
    rows = pd.Series({str(gene): str(label) for label, genes in classes.items() for gene in genes})
    both = set.intersection(*({str(g) for g in genes} for genes in classes.values()))
    if both:
        log.warning("%s: %d genes are in both classes, left out", name, len(both))
    labels = rows[~rows.index.isin(both)]
    if labels.value_counts().min() < 2 or labels.nunique() < 2:
        raise ScencodeError(f"{name} labels hold fewer than two genes in a class", path)
    return labels.rename(name)


def run(name: str, out: OutputFile, sha256: str | None = None, url: str | None = None) -> str:
    """Download task ``name``'s label file to ``out`` (commit-pinned URL; ``sha256`` checked if
    given) and check that it reads; returns its sha256. ``url``: a mirror of that file (a site
    without access to the Hub), accepted only with its ``sha256``."""
    from .fetch import download_url

    spec = task(name)
    if url and not sha256:
        raise ScencodeError(f"gene task {name}: a mirror URL needs the file's sha256 (the pinned URL's content)", out)
    digest = download_url(url or spec.url, out, sha256=sha256, max_bytes=50 * 2**20)
    try:
        labels = read_labels(out, name)
    except ScencodeError:
        Path(out).unlink(missing_ok=True)
        raise
    log.info(
        "%s: %s genes (%s) from %s, sha256 %s; %s",
        name,
        len(labels),
        ", ".join(f"{c} {n}" for c, n in labels.value_counts().items()),
        url or spec.url,
        digest,
        LICENCE,
    )
    return digest
