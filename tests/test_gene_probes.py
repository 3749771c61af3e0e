"""Gene probes: high on a table built to separate gene families, at chance on a random one."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import write_status

from scencode.gene_probes import ProbeParams, gene_properties, probe

PARAMS = ProbeParams(min_members=10, folds=5, knn_k=5, seed=0)


def families(n_families=6, per_family=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = pd.Series(np.repeat([f"family{i}" for i in range(n_families)], per_family))
    return labels, rng


def test_probes_score_high_on_a_table_that_separates_the_families():
    labels, rng = families()
    centres = rng.normal(0, 3, (6, 16))
    embedding = centres[labels.str[-1].astype(int)] + rng.normal(0, 1, (len(labels), 16))
    result = probe(embedding, labels, PARAMS)
    assert result["classes"] == 6 and result["genes"] == 180
    assert result["scores"]["knn_macro_f1"] > 0.9 and result["scores"]["logreg_macro_f1"] > 0.9
    assert result["scores"]["knn_auroc"] > 0.97 and result["scores"]["logreg_auroc"] > 0.97


def test_a_binary_gene_task_gets_the_fields_auroc_high_when_separated_and_half_at_random():
    """The field's gene tasks (dosage-sensitive vs insensitive TFs, …) are binary and scored by AUROC."""
    rng = np.random.default_rng(1)
    labels = pd.Series(np.repeat(["sensitive", "insensitive"], [60, 90]))
    separated = rng.normal(size=(150, 8)) + np.where(labels.to_numpy() == "sensitive", 2.0, 0.0)[:, None]
    scores = probe(separated, labels, PARAMS)["scores"]
    assert scores["logreg_auroc"] > 0.95 and scores["knn_auroc"] > 0.9
    random = [probe(rng.normal(size=(150, 8)), labels, ProbeParams(seed=s))["scores"] for s in range(4)]
    for kind in ("knn", "logreg", "chance"):
        assert abs(np.mean([s[f"{kind}_auroc"] for s in random]) - 0.5) < 0.08


def test_probes_are_at_chance_on_a_random_table():
    labels, rng = families()
    scores = [probe(rng.normal(size=(len(labels), 16)), labels, ProbeParams(seed=s))["scores"] for s in range(3)]
    chance = 1 / 6
    for kind in ("knn", "logreg"):
        assert abs(np.mean([s[f"{kind}_macro_f1"] for s in scores]) - chance) < 0.08
        assert abs(np.mean([s[f"{kind}_auroc"] for s in scores]) - 0.5) < 0.06


def test_small_classes_are_left_out_and_one_class_is_no_probe():
    labels = pd.Series(["a"] * 20 + ["b"] * 20 + ["c"] * 3)
    result = probe(np.random.default_rng(0).normal(size=(43, 4)), labels, PARAMS)
    assert result["genes"] == 40 and result["classes"] == 2
    assert probe(np.zeros((20, 4)), pd.Series(["a"] * 20), PARAMS)["scores"] == {}


def test_properties_come_from_hgnc_and_the_protein_lengths():
    genes = pd.Index(
        ["ENSG00000141510", "ENSG00000000003", "ENSG00000198804", "ENSG99999999999"]
    )  # TP53, TSPAN6, MT-CO1
    lengths = pd.Series([393.0, 245.0, 513.0, np.nan], index=genes)
    props = gene_properties(genes, lengths)
    assert props.loc["ENSG00000141510", "chromosome"] == "17" and props.loc["ENSG00000000003", "chromosome"] == "X"
    assert props.loc["ENSG00000000003", "family"] == "Tetraspanins"
    assert pd.isna(props.loc["ENSG99999999999"]).all()
    assert props.protein_length.tolist()[:3] == ["middle", "short", "long"]


def test_the_workflows_models_are_probed_beside_the_references(demo_corpus, tmp_path):
    from scencode.gene_probes import run
    from scencode.loader import LoaderConfig
    from scencode.model import ModelConfig
    from scencode.pretrain import RunSpec, TrainConfig, fit, setup

    corpus, vocab = demo_corpus
    spec = RunSpec(
        "learned-log-s0",
        corpus,
        vocab,
        tmp_path / "m",
        ModelConfig(0, "learned", "log", d_model=16, n_layers=1, n_heads=2, d_ff=32),
        LoaderConfig(batch_size=16, context=64, bucket_batches=2),
        TrainConfig(max_steps=2, val_every=2, log_every=1),
        None,
    )
    fit(setup(spec))
    runs = [
        {
            "run": "learned-log-s0",
            "gene_encoding": "learned",
            "expression_encoding": "log",
            "seed": 0,
            "model": str(tmp_path / "m" / "model.json"),
        },
        {
            "run": "esm2-log-s0",
            "gene_encoding": "esm2",
            "expression_encoding": "log",
            "seed": 0,
            "model": str(tmp_path / "missing" / "model.json"),
        },
    ]
    write_status(tmp_path / "missing", "esm2-log-s0", status="diverged", checkpoint=None, note="training diverged")
    table = run(runs, vocab, tmp_path / "probes.csv", tmp_path / "probes.png", params=ProbeParams(min_members=5))
    assert set(table.configuration) == {"learned-log-s0", "esm2-log-s0", "reference-random_table"}
    assert set(table.group) == {"gene_probe_family", "gene_probe_chromosome"}
    learned = table[table.configuration == "learned-log-s0"]
    assert learned.value.between(0, 1).all() and learned.note.str.contains("5-fold").all()
    assert table[table.configuration == "esm2-log-s0"].value.isna().all()
    assert (tmp_path / "probes.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "probes.pdf").read_bytes()[:4] == b"%PDF"
    chance = table[table.metric == "chance_macro_f1"]  # the figure's reference: a stratified guess
    assert len(chance) and chance[chance.configuration == "learned-log-s0"].value.lt(learned.value.max()).all()


def test_a_probe_fitted_on_seen_genes_transfers_to_unseen_ones_only_where_each_gene_has_its_own_vector():
    """Issue 34: on genes never trained on, a learned table gives one shared vector (chance by
    construction) where a table that knows each gene (as ESM-2 knows its protein) still separates them."""
    from scencode.gene_probes import transfer_probe

    labels, rng = families(n_families=3, per_family=60)
    centres = rng.normal(0, 3, (3, 16))
    knowing = centres[labels.str[-1].astype(int)] + rng.normal(0, 1, (len(labels), 16))
    unseen = rng.random(len(labels)) < 0.2
    result = transfer_probe(knowing, labels, unseen, PARAMS)
    assert result["genes"] == unseen.sum() and result["trained_on"] == (~unseen).sum() and result["classes"] == 3
    assert result["scores"]["logreg_auroc_unseen"] > 0.95 and result["scores"]["knn_macro_f1_unseen"] > 0.8
    shared = knowing.copy()
    shared[unseen] = knowing[~unseen].mean(0)  # the learned table's unknown vector
    blind = transfer_probe(shared, labels, unseen, PARAMS)["scores"]
    assert blind["logreg_auroc_unseen"] == 0.5 and blind["knn_auroc_unseen"] == 0.5
