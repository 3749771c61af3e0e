"""``scencode <step>``: one subcommand per workflow step. Rules pass their slice of config as JSON
(``--params``), so a changed setting reruns exactly the jobs that read it."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from .errors import ScencodeError

log = logging.getLogger("scencode")
RECONSTRUCTION_METRICS = ("masked_mse", "masked_mse_no_context", "gene_mean_mse")  # embed.ReconstructionErrors


def _params(cls, values: dict | str | None, validate: bool = True):
    """Build a params dataclass from a dict or JSON text, naming any unknown key or wrong type, and
    run its ``validate()`` (``validate=False``: the caller completes it first)."""
    values = json.loads(values) if isinstance(values, str) else (values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ScencodeError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(known))})")
    check_types(cls, values)
    params = cls(**values)
    if validate and hasattr(params, "validate"):
        params.validate()
    return params


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def check_types(cls, values: dict) -> None:
    """Settings that bypass the config schema (a --params JSON) are checked against the dataclass's
    annotations: a string where a number belongs is named, not a traceback three calls later."""
    annotations = {f.name: str(f.type) for f in fields(cls)}
    for key, value in values.items():
        allowed = [t.strip() for t in annotations[key].split("|")]
        if not all(t in _TYPES for t in allowed):
            continue  # containers and classes: the step checks them
        ok = any(isinstance(value, _TYPES[t]) for t in allowed) and not (
            isinstance(value, bool) and "bool" not in allowed)
        if not ok:
            raise ScencodeError(f"{cls.__name__} setting {key}={value!r}: expected {annotations[key]}")


def cmd_gene_table(args) -> None:
    from .genes import PACKAGED_GENCODE, PACKAGED_HGNC, build_gene_table, packaged_file
    from .sources import download_url

    with tempfile.TemporaryDirectory() as tmp:
        def resolve(location, packaged, sha256):
            if not location:
                return packaged_file(packaged)
            if "://" in location:
                if not sha256:
                    raise ScencodeError(f"gene table URL {location} has no sha256: pin it (gencode_sha256 / "
                                        f"hgnc_sha256) so a changed or tampered file is refused")
                target = Path(tmp) / Path(location).name
                download_url(location, target, sha256=sha256)
                return target
            return Path(location)

        summary = build_gene_table(resolve(args.gencode, PACKAGED_GENCODE, args.gencode_sha256),
                                   resolve(args.hgnc, PACKAGED_HGNC, args.hgnc_sha256), Path(args.out))
    log.info("gene table: %s", summary)


def cmd_download(args) -> None:
    from .sources import fetch

    fetch(json.loads(args.source), args.out, seed=args.seed)


def cmd_qc(args) -> None:
    from .genes import GeneTable
    from .qc import QCParams, run_qc

    report = run_qc(args.input, args.output, args.report, GeneTable.load(args.gene_table),
                    _params(QCParams, args.params), args.dataset)
    log.info("qc %s: %d → %d cells, %d genes", args.dataset, report["cells"]["in"], report["cells"]["out"],
             report["genes"]["out"])


def cmd_vocab(args) -> None:
    from .vocab import build_vocab, write_vocab

    vocab = build_vocab(args.qc, args.policy, args.protein_genes)
    digest = write_vocab(vocab, args.out)
    log.info("vocabulary: %d tokens (hash %s)", len(vocab), digest[:12])


def cmd_tokenize(args) -> None:
    from .tokenize import DatasetInput, TokenizeParams, tokenize_corpus

    from .leakage import excluded_cells

    datasets = [DatasetInput(d["dataset_id"], Path(d["path"]), d.get("label_key"), d.get("batch_key"),
                             tuple(excluded_cells(args.exclude, d["dataset_id"])))
                for d in json.loads(args.datasets)]
    manifest = tokenize_corpus(args.corpus, datasets, args.vocab, args.out, _params(TokenizeParams, args.params),
                               with_labels=args.labels)
    log.info("corpus %s: %d cells in %d shards", args.corpus, manifest["n_cells"], len(manifest["shards"]))


def cmd_leakage(args) -> None:
    from .leakage import run

    result = run(json.loads(args.datasets), args.policy, args.out, args.table)
    log.info("leakage audit: %d of %d pairs share data; %d training cells dropped", result["pairs_leaking"],
             result["pairs_compared"], result["cells_dropped"])


def cmd_proteins(args) -> None:
    from .proteins import demo_fasta, read_peptide_fasta
    from .sources import download_url, link_local

    source = json.loads(args.source)
    kind = source.get("type")
    if kind == "demo":
        demo_fasta(args.out)
    elif kind == "url":
        if "sha256" not in source:
            raise ScencodeError(f"protein URL {source.get('url')} has no sha256: pin it in esm.proteins.sha256 "
                                "(or write sha256: null to download it unpinned on purpose)")
        digest = download_url(source["url"], args.out, sha256=source["sha256"])
        if source["sha256"]:
            log.info("downloaded %s (sha256 %s, as pinned)", source["url"], digest)
        else:
            log.warning("downloaded %s UNPINNED: its sha256 is %s; write it in esm.proteins.sha256 so that "
                        "a changed file is refused next time", source["url"], digest)
    elif kind == "local":
        link_local(source["path"], args.out, check_hdf5=False)
    else:
        raise ScencodeError(f"unknown protein source type {kind!r}; choose one of demo, url, local")
    try:
        proteins = read_peptide_fasta(args.out)
    except ScencodeError:
        Path(args.out).unlink(missing_ok=True)
        raise
    log.info("proteins: %d sequences of %d genes", len(proteins), proteins.gene_id.nunique())


def cmd_esm_tiny(args) -> None:
    from .esm_embed import save_tiny_esm2

    save_tiny_esm2(args.out, layers=args.layers, dim=args.dim, heads=args.heads, seed=args.seed)


def cmd_esm_embed(args) -> None:
    from .esm_embed import EmbedParams, ESMEmbedder, embed_genes, esm2_weights, load_weights
    from .proteins import read_peptide_fasta, select_isoforms

    params = _params(EmbedParams, args.params)
    isoforms = select_isoforms(read_peptide_fasta(args.fasta), params.isoforms)
    weights, weights_sha256 = esm2_weights(args.model, args.weights, args.sha256)
    model, alphabet = load_weights(weights)
    torch_threads(args.threads)
    embedder = ESMEmbedder(model, alphabet, params)
    meta = {"source": "esm2", "model": args.model or Path(args.weights).name, "layer": embedder.layer,
            "isoforms": params.isoforms, "long_sequences": params.long_sequences,
            "fasta": Path(args.fasta).name,
            # a local weights file by content: a changed file with the same name is another model
            "weights_sha256": weights_sha256}
    genes = embed_genes(isoforms, embedder, args.out, meta)
    log.info("ESM-2 gene embeddings: %d genes, dim %d, layer %d", len(genes), embedder.dim, embedder.layer)


def cmd_esm_import(args) -> None:
    from .gene_embeddings import import_table
    from .genes import GeneTable

    table = GeneTable.load(args.gene_table) if args.gene_table else None
    report = import_table(args.format, args.input, args.out, table, args.expected_dim)
    log.info("imported %s table: %s", args.format, report)


def cmd_esm_coverage(args) -> None:
    import pandas as pd

    from .atomic import write_json
    from .esm_embed import read_gene_table
    from .gene_embeddings import coverage_report
    from .genes import GeneTable
    from .vocab import dataset_genes

    embedded, matrix, meta = read_gene_table(args.table)
    if args.expected_dim is not None and matrix.shape[1] != args.expected_dim:
        raise ScencodeError(f"embeddings have dimension {matrix.shape[1]}, config expects {args.expected_dim}",
                            args.table)
    candidates = pd.Index(sorted(set().union(*(dataset_genes(p).gene_id for p in args.qc))))
    report = {"table": str(args.table), "model": meta,
              **coverage_report(embedded, candidates, GeneTable.load(args.gene_table))}
    write_json(report, args.out)
    log.info("coverage: %d of %d dataset genes have an embedding", report["dataset_genes_with_embedding"],
             report["dataset_genes"])


def cmd_pretrain(args) -> None:
    from .data import LoaderConfig
    from .model import ModelConfig
    from .train import PREEMPTED_EXIT, Preempted, RunSpec, TrainConfig, Trainer

    settings = json.loads(args.params) if args.params else {}
    # the vocabulary's size is known once the Trainer reads it; the model validates itself then
    model = _params(ModelConfig, {"vocab_size": 0, **settings.get("model", {})}, validate=False)
    spec = RunSpec(args.name, Path(args.corpus), Path(args.vocab), Path(args.out), model,
                   _params(LoaderConfig, settings.get("loader")), _params(TrainConfig, settings.get("train")),
                   Path(args.gene_table) if args.gene_table else None)
    torch_threads(args.threads)
    try:
        state = Trainer(spec).fit()
    except Preempted as signum:
        log.warning("stopped by signal %s; last.pt saved, rerun to resume", signum)
        sys.exit(PREEMPTED_EXIT)
    log.info("%s: %d steps, best validation loss %.5f", args.name, state.step, state.best_val)


def cmd_embed(args) -> None:
    from .atomic import write_json
    from .data import LoaderConfig
    from .embed import embed_corpus, model_checkpoint, write_missing_embedding

    loader = _params(LoaderConfig, args.loader)
    torch_threads(args.threads)
    checkpoint, missing = model_checkpoint(args.model)
    if checkpoint is None:
        write_missing_embedding(missing, args.out, args.h5ad, args.configuration, args.dataset)
        write_json({"cells": 0, "masked_mse": None, "missing": missing}, args.reconstruction)
        return
    info = embed_corpus(checkpoint, args.corpus, loader, args.out, args.h5ad, args.configuration, args.dataset)
    write_json(info, args.reconstruction)
    log.info("%s on %s: %d cells embedded", args.configuration, args.dataset, info["cells"])


def cmd_baseline(args) -> None:
    from .atomic import write_json
    from .evaluate import baseline_embedding, write_embedding

    cells, matrix = baseline_embedding(args.kind, args.qc, args.dataset, args.label_key, args.batch_key, args.seed,
                                       scvi_epochs=args.scvi_epochs)
    write_embedding(cells, matrix, args.out)
    write_json({"cells": len(cells), "dim": int(matrix.shape[1]), "masked_mse": None}, args.reconstruction)


def cmd_evaluate(args) -> None:
    import pandas as pd

    from .atomic import atomic_path
    from .evaluate import EvalParams, evaluate_embedding, read_embedding, tidy

    cells, matrix, missing = read_embedding(args.embedding)
    try:
        rows = evaluate_embedding(matrix, cells.label.to_numpy(), cells.batch.to_numpy(),
                                  _params(EvalParams, args.params))
    except ScencodeError as exc:
        raise ScencodeError(f"{args.configuration} on {args.dataset}: {exc}", args.embedding) from None
    recon = json.loads(Path(args.reconstruction).read_text())
    if recon.get("masked_mse") is not None or missing:  # models only: baselines reconstruct nothing
        rows = pd.concat([rows, pd.DataFrame([
            {"metric": metric, "group": "reconstruction", "note": "evaluation dataset",
             "value": recon[metric] if recon.get(metric) is not None else float("nan")}
            for metric in RECONSTRUCTION_METRICS])])
    if missing:  # no model: every metric is NaN, and the table says why
        rows = rows.assign(value=float("nan"), note=missing)
    table = tidy(rows, args.configuration, args.dataset)
    with atomic_path(args.out, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)


def cmd_scib_benchmark(args) -> None:
    from .atomic import atomic_path
    from .evaluate import EvalParams
    from .scib_benchmark import benchmark_dataset

    settings = json.loads(args.params) if args.params else {}
    embeddings = {Path(p).parent.name: Path(p) for p in args.embeddings}
    rows = benchmark_dataset(embeddings, Path(args.pre_integrated), args.dataset,
                             max_cells=settings.get("max_cells_scib", EvalParams.max_cells_scib),
                             seed=settings.get("seed", EvalParams.seed),
                             threads=args.threads)
    with atomic_path(args.out, suffix=".parquet") as tmp:
        rows.to_parquet(tmp, index=False)
    log.info("scib-metrics default set on %s: %d embeddings", args.dataset, len(embeddings))


def cmd_reconstruction(args) -> None:
    import pandas as pd

    from .atomic import atomic_path
    from .data import LoaderConfig
    from .embed import masked_mse, model_checkpoint
    from .evaluate import tidy

    log_table = pd.read_parquet(args.train_log)
    checkpoint, missing = model_checkpoint(args.model)
    if checkpoint is None:
        test, test_note = {metric: float("nan") for metric in RECONSTRUCTION_METRICS}, missing
    else:
        test = masked_mse(checkpoint, args.corpus, "test", _params(LoaderConfig, args.loader))
        test_note = f"held-out test split, {test['cells']} cells"
    status = json.loads(Path(args.model).read_text()) if Path(args.model).suffix == ".json" else {}
    min_train = log_table.train_loss.min()
    nan = float("nan")
    rows = pd.DataFrame([
        {"metric": "min_train_mse", "group": "reconstruction", "value": min_train,
         "note": "minimum logged training masked MSE" if pd.notna(min_train) else
         "no finite training loss was logged (see model.json)"},
        {"metric": "test_mse", "group": "reconstruction", "value": test["masked_mse"], "note": test_note},
        *({"metric": f"test_{metric}", "group": "reconstruction", "value": test.get(metric, nan),
           "note": test_note} for metric in RECONSTRUCTION_METRICS[1:]),
        # how training ended: the report shows whether a configuration was still improving
        {"metric": "final_val_loss", "group": "training", "value": status.get("final_val_loss") or nan,
         "note": f"validation loss at the last step ({status.get('steps')})"},
        {"metric": "still_improving", "group": "training", "value": float(bool(status.get("still_improving"))),
         "note": "1: the last validation was the best (more training would likely help)"},
        {"metric": "checkpoint_step", "group": "training", "value": status.get("checkpoint_step") or nan,
         "note": "step of the evaluated checkpoint (best validation, the last step included)"},
    ])
    if checkpoint is None:  # no usable model: how training ended says nothing about an evaluated one
        training = rows.group == "training"
        rows.loc[training, "value"], rows.loc[training, "note"] = nan, missing
    with atomic_path(args.out, suffix=".parquet") as tmp:
        tidy(rows, args.configuration, "*").to_parquet(tmp, index=False)


def cmd_aggregate(args) -> None:
    from .aggregate import write_tables

    log.info("tables: %s", write_tables(args.metrics, args.out_dir, args.reference_expression))


def cmd_figures(args) -> None:
    from .figures import draw_all

    paths = draw_all(args.summary, args.metrics, args.train_logs, args.out_dir, caveat=args.caveat)
    log.info("figures: %s", ", ".join(p.name for p in paths))


def torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_check_shards(args) -> None:
    from .shards import verify_corpus

    manifest = verify_corpus(args.corpus_dir, checksums=True)
    print(json.dumps({k: manifest[k] for k in ("corpus", "n_cells", "splits", "nnz", "vocab_hash")}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scencode", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True)

    p = sub.add_parser("gene-table", help="build the gene table (Ensembl ids, symbols) used by QC")
    p.add_argument("--gencode", help="GENCODE genes CSV (path or URL); default: the packaged GENCODE 48")
    p.add_argument("--gencode-sha256")
    p.add_argument("--hgnc", help="HGNC complete set TSV (path or URL); default: the packaged 2024-10 set")
    p.add_argument("--hgnc-sha256")
    p.add_argument("--out", required=True, help="output folder (genes.parquet, symbols.parquet)")
    p.set_defaults(func=cmd_gene_table)

    p = sub.add_parser("download", help="fetch one dataset to an h5ad")
    p.add_argument("--source", required=True, help="source as JSON, e.g. '{\"type\": \"demo\", \"name\": ...}'")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("qc", help="filter cells and genes, harmonise gene ids, check raw counts")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--gene-table", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--params", help="QC settings as JSON")
    p.set_defaults(func=cmd_qc)

    p = sub.add_parser("leakage", help="audit training vs evaluation datasets for shared data")
    p.add_argument("--datasets", required=True, help="JSON list of {name, role, qc, raw, source}")
    p.add_argument("--policy", default="report", choices=["report", "drop", "error"])
    p.add_argument("--out", required=True, help="the audit (JSON)")
    p.add_argument("--table", required=True, help="one row per pair that shares something (CSV, for the report)")
    p.set_defaults(func=cmd_leakage)

    p = sub.add_parser("vocab", help="build the shared gene vocabulary")
    p.add_argument("--qc", nargs="+", required=True, help="QC'd h5ad files of the training datasets")
    p.add_argument("--policy", default="union")
    p.add_argument("--protein-genes", help="table of genes with a protein embedding (policy 'protein')")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser("tokenize", help="write a corpus of Parquet token shards")
    p.add_argument("--corpus", required=True)
    p.add_argument("--datasets", required=True, help="JSON list of {dataset_id, path, label_key, batch_key}")
    p.add_argument("--vocab", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--params", help="tokenize settings as JSON")
    p.add_argument("--labels", action="store_true", help="evaluation corpus: write label and batch columns")
    p.add_argument("--exclude", help="the leakage audit's JSON: leave out the training cells it lists (policy drop)")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("proteins", help="fetch a peptide FASTA (Ensembl pep.all, or the demo's)")
    p.add_argument("--source", required=True, help='JSON: {"type": "demo"} | {"type": "url", ...} | {"type": "local", ...}')
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_proteins)

    p = sub.add_parser("plan", help="what a configured run costs (GPU-/CPU-hours, memory, disk, wall time), "
                                     "before any job is submitted")
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the pretraining and embedding jobs share")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("esm-tiny", help="save a randomly initialised tiny ESM-2 (demo and tests)")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_esm_tiny)

    p = sub.add_parser("esm-embed", help="ESM-2 gene embeddings from a peptide FASTA")
    p.add_argument("--fasta", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="released ESM-2 name, e.g. esm2_t36_3B_UR50D (fetched to the torch hub cache)")
    group.add_argument("--weights", help="local fair-esm checkpoint (.pt)")
    p.add_argument("--sha256", help="the weights file's pinned sha256 (any other file is refused)")
    p.add_argument("--params", help="embedding settings as JSON")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_esm_embed)

    p = sub.add_parser("esm-import", help="import a published gene/protein embedding table")
    p.add_argument("--format", required=True, choices=["transcriptformer", "uce"])
    p.add_argument("--input", required=True)
    p.add_argument("--gene-table", help="gene table folder (maps UCE's symbols)")
    p.add_argument("--expected-dim", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_esm_import)

    p = sub.add_parser("esm-coverage", help="which dataset genes have a protein embedding")
    p.add_argument("--table", required=True)
    p.add_argument("--qc", nargs="+", required=True)
    p.add_argument("--gene-table", required=True)
    p.add_argument("--expected-dim", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_esm_coverage)

    p = sub.add_parser("pretrain", help="pretrain one encoding configuration (resumes from last.pt)")
    p.add_argument("--name", required=True, help="configuration name, e.g. learned-soft-s777")
    p.add_argument("--corpus", required=True, help="training corpus folder (token shards)")
    p.add_argument("--vocab", required=True)
    p.add_argument("--gene-table", help="gene embedding table (esm2 and random_frozen gene encodings)")
    p.add_argument("--params", help='JSON: {"model": {...}, "loader": {...}, "train": {...}}')
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True, help="folder for best.pt, last.pt, train_log.parquet")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("embed", help="cell embeddings of a model on an evaluation corpus")
    p.add_argument("--model", required=True, help="a run's model.json (no model: empty outputs that say why) "
                                                    "or a checkpoint .pt")
    p.add_argument("--corpus", required=True)
    p.add_argument("--configuration", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--loader", help="loader settings as JSON (context, batch_size, ...)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True, help="embedding Parquet")
    p.add_argument("--h5ad", help="the same as .h5ad (obsm['X_scencode']; needs anndata); omitted: Parquet only")
    p.add_argument("--reconstruction", required=True, help="JSON with the masked MSE on this dataset")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("baseline", help="a baseline embedding (pca, scvi or random) of an evaluation dataset")
    p.add_argument("--kind", required=True, choices=["pca", "random", "scvi"])
    p.add_argument("--scvi-epochs", type=int, help="scVI training epochs (default: scvi-tools' for the size)")
    p.add_argument("--qc", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--label-key", required=True)
    p.add_argument("--batch-key")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--reconstruction", required=True)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("evaluate", help="scIB, classification and reconstruction metrics of one embedding")
    p.add_argument("--embedding", required=True)
    p.add_argument("--reconstruction", required=True)
    p.add_argument("--configuration", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--params")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("scib-benchmark", help="scib-metrics' own default set and aggregate, every embedding "
                                              "of one dataset")
    p.add_argument("--embeddings", nargs="+", required=True, help="embedding Parquet files, one per "
                                                                    "configuration folder")
    p.add_argument("--pre-integrated", required=True, help="the unintegrated reference embedding (PCA baseline)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--params", help='JSON: {"max_cells_scib": ..., "seed": ...}')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_scib_benchmark)

    p = sub.add_parser("reconstruction", help="minimum training and held-out test masked MSE of a model")
    p.add_argument("--model", required=True, help="a run's model.json or a checkpoint .pt")
    p.add_argument("--train-log", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--configuration", required=True)
    p.add_argument("--loader")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reconstruction)

    p = sub.add_parser("aggregate", help="metrics.csv, summary.csv and tests.csv from metric tables")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--reference-expression", default="soft",
                   help="expression encoding compared with each other one (declared in config, not picked from results)")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("figures", help="the study's figures from the tables")
    p.add_argument("--summary", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--train-logs", nargs="*", default=[])
    p.add_argument("--caveat", default="", help="printed on the paper comparison (e.g. demo data, tiny models)")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("check-shards", help="verify a corpus against its manifest")
    p.add_argument("corpus_dir")
    p.set_defaults(func=cmd_check_shards)
    return parser


def cmd_plan(args) -> None:
    import yaml

    from .plan import render

    path = Path(args.configfile)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScencodeError(f"not a readable config ({exc})", path) from exc
    print(render(config, gpus=args.gpus))


class Terminated(Exception):
    """SIGTERM/SIGINT (SLURM's scancel, a time limit, Ctrl-C) raised as an exception, so that every
    step unwinds through its atomic writers and leaves no temporary file behind. Training installs
    its own handler (checkpoint at the next step) on top of this one."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_terminated)
    try:
        args.func(args)
    except ScencodeError as exc:
        print(f"scencode {args.step}: error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"scencode {args.step}: stopped by {exc}; no partial output was kept", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
