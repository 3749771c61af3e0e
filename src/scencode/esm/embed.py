"""Gene embeddings from ESM-2 (fair-esm): mean over residues of one layer, per gene.

Sequences are sorted by length and packed into batches by a token budget, so padding stays small;
sequences longer than ESM-2's 1,022-residue context are embedded in overlapping windows whose
per-residue outputs are averaged where they overlap (or truncated, by config). Finished pieces are
written as they complete, so a killed job restarts where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from ..atomic import OutputFile, atomic_path
from ..devices import default_device
from ..errors import ScencodeError
from ..formats import write_gene_table
from ..parquet_io import column_matrix, matrix_column

log = logging.getLogger(__name__)
MAX_RESIDUES = 1022  # ESM-2 context minus BOS/EOS
# name → (layers, dim, heads): the released ESM-2 models
ESM2_MODELS = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
LONG_POLICIES = ("window", "truncate")


@dataclass
class EmbedParams:
    layer: int | None = None  # default: the last layer
    isoforms: str = "mean"  # mean | longest | canonical
    long_sequences: str = "window"  # window | truncate
    window_overlap: int = 256
    token_budget: int = 16_384  # residues (+2 per sequence) per batch
    piece_sequences: int = 2_000  # sequences per resumable piece
    device: str = "auto"  # auto | cpu | cuda

    def validate(self) -> None:
        for key, allowed in (("long_sequences", LONG_POLICIES), ("device", ("auto", "cpu", "cuda"))):
            if getattr(self, key) not in allowed:
                raise ScencodeError(f"esm.embed.{key} {getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        for key in ("window_overlap", "token_budget", "piece_sequences"):
            if not getattr(self, key) > 0:
                raise ScencodeError(f"esm.embed.{key} must be > 0, got {getattr(self, key)!r}")
        if self.window_overlap >= MAX_RESIDUES:
            raise ScencodeError(f"esm.embed.window_overlap {self.window_overlap} must be below {MAX_RESIDUES}")


RELEASED_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"  # fair-esm's own hub address


def esm2_weights(
    name: str | None = None,
    weights: str | Path | None = None,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    url: str = RELEASED_URL,
) -> tuple[Path, str]:
    """(weights file, its sha256), hashed once: a local file, or the released checkpoint ``name`` in
    the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where fair-esm keeps it), downloaded there
    first if absent (streamed, size-checked, atomically renamed). A pinned ``sha256`` must match."""
    from ..shards import file_sha256

    if weights:
        path = Path(weights)
        if not path.exists():
            raise ScencodeError("ESM-2 weights file not found", path)
    elif name not in ESM2_MODELS:
        raise ScencodeError(
            f"unknown ESM-2 model {name!r}; known: {', '.join(ESM2_MODELS)} (or give a local weights file)"
        )
    else:
        path = Path(cache_dir or Path(torch.hub.get_dir()) / "checkpoints") / f"{name}.pt"
        if not path.exists():
            from ..fetch import download_url  # h5py: not needed (nor installed on a bare GPU node) otherwise

            log.info("ESM-2 %s: downloading %s to %s", name, url.format(name=name), path)
            digest = download_url(url.format(name=name), path, sha256=sha256)  # refuses a pin mismatch
            if not sha256:
                log.warning(
                    "ESM-2 %s is not pinned: its sha256 is %s (esm.model.sha256 in config refuses any other file)",
                    name,
                    digest,
                )
            return path, digest
    digest = file_sha256(path)
    if sha256 and digest != sha256.lower():
        raise ScencodeError(
            f"sha256 {digest} is not the pinned {sha256}: a different or tampered file; delete it to download again",
            path,
        )
    return path, digest


def load_weights(path: Path):
    """A fair-esm checkpoint file read with ``weights_only=True``."""
    import esm

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoints
        raise ScencodeError(f"not a readable torch checkpoint ({type(exc).__name__})", path) from exc
    if not (
        isinstance(data, dict)
        and {"cfg", "model"} <= set(data)
        and isinstance(data["cfg"], dict)
        and hasattr(data["cfg"].get("model"), "encoder_layers")
    ):
        raise ScencodeError(
            "not an ESM-2 checkpoint (expected fair-esm's {'cfg': {'model': ...}, 'model': state_dict} layout)", path
        )
    try:
        with warnings.catch_warnings():  # contact-regression weights are irrelevant to embeddings
            warnings.filterwarnings("ignore", message="Regression weights not found")
            return esm.pretrained.load_model_and_alphabet_core("esm2_local", data)
    except (RuntimeError, KeyError, AttributeError) as exc:
        raise ScencodeError(f"not an ESM-2 checkpoint ({str(exc)[:200]})", path) from exc


def save_tiny_esm2(path: str | Path, layers: int = 2, dim: int = 32, heads: int = 2, seed: int = 0) -> None:
    """A randomly initialised ESM-2 built with fair-esm's own class, saved in fair-esm's checkpoint
    layout: the demo and the tests use it where a real model would be downloaded."""
    import esm

    torch.manual_seed(seed)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet=alphabet)
    cfg = argparse.Namespace(
        encoder_layers=layers, encoder_embed_dim=dim, encoder_attention_heads=heads, token_dropout=True
    )
    state = {
        f"encoder.sentence_encoder.{k}": v
        for k, v in model.state_dict().items()
        if not k.startswith("contact_head.regression")
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"cfg": {"model": cfg}, "model": state}, tmp)


def windows(length: int, long_policy: str, overlap: int) -> list[tuple[int, int]]:
    """(start, stop) residue windows covering a sequence within the model's context."""
    if length <= MAX_RESIDUES or long_policy == "truncate":
        return [(0, min(length, MAX_RESIDUES))]
    stride = MAX_RESIDUES - overlap
    starts = list(range(0, length - MAX_RESIDUES, stride)) + [length - MAX_RESIDUES]
    return [(s, s + MAX_RESIDUES) for s in starts]


def token_budget_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices grouped so that n × (max length + 2) ≤ budget, longest first."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    current: list[int] = []
    width = 0
    for i in order:
        w = max(width, int(lengths[i]) + 2)
        if current and w * (len(current) + 1) > budget:
            batches.append(np.array(current))
            current, w = [], int(lengths[i]) + 2
        current.append(i)
        width = w
    if current:
        batches.append(np.array(current))
    return batches


class ESMEmbedder:
    def __init__(self, model, alphabet, params: EmbedParams):
        params.validate()
        self.params = params
        self.layer = model.num_layers if params.layer is None else params.layer
        if not 0 <= self.layer <= model.num_layers:
            raise ScencodeError(f"layer {self.layer} does not exist (model has {model.num_layers} layers)")
        self.device = default_device() if params.device == "auto" else torch.device(params.device)
        dtype = torch.float32
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.model = model.eval().to(self.device, dtype=dtype)
        self.alphabet = alphabet
        self.dim = model.embed_dim
        # one-character tokens through a lookup table: the same ids as alphabet.encode, vectorised
        self._lut = np.full(256, alphabet.unk_idx, dtype=np.int64)
        for tok, idx in alphabet.tok_to_idx.items():
            if len(tok) == 1:
                self._lut[ord(tok)] = idx

    def embed(self, sequences: list[str], progress: bool = True) -> np.ndarray:
        """Mean-over-residues embedding of each sequence (float32, one row per sequence)."""
        p = self.params
        pieces, owner, weights = [], [], []
        for i, seq in enumerate(sequences):
            spans = windows(len(seq), p.long_sequences, p.window_overlap)
            covered = np.zeros(len(seq))
            for start, stop in spans:
                covered[start:stop] += 1
            n_residues = int((covered > 0).sum())
            for start, stop in spans:
                pieces.append(seq[start:stop])
                owner.append(i)
                # residues seen by several windows count once overall
                weights.append(1.0 / (covered[start:stop] * n_residues))
        lengths = np.array([len(s) for s in pieces])
        owners = np.array(owner)
        out = np.zeros((len(sequences), self.dim), dtype=np.float64)
        batches = token_budget_batches(lengths, p.token_budget)
        for batch in tqdm(batches, desc="esm batches", disable=not progress, mininterval=5):
            reps = self.represent([pieces[j] for j in batch])
            w = torch.zeros(reps.shape[:2], dtype=torch.float32)
            for row, j in enumerate(batch):
                w[row, 1 : 1 + len(pieces[j])] = torch.from_numpy(weights[j])
            pooled = torch.einsum("bt,btd->bd", w, reps).numpy()
            np.add.at(out, owners[batch], pooled)
        return out.astype(np.float32)

    @torch.inference_mode()
    def represent(self, seqs: list[str]) -> torch.Tensor:
        width = max(len(s) for s in seqs) + 2
        tokens = torch.full((len(seqs), width), self.alphabet.padding_idx, dtype=torch.long)
        for row, seq in enumerate(seqs):
            tokens[row, 0] = self.alphabet.cls_idx
            tokens[row, 1 : len(seq) + 1] = torch.from_numpy(self._lut[np.frombuffer(seq.encode(), np.uint8)])
            tokens[row, len(seq) + 1] = self.alphabet.eos_idx
        out = self.model(tokens.to(self.device), repr_layers=[self.layer])
        return out["representations"][self.layer].float().cpu()


def embed_genes(isoforms: pd.DataFrame, embedder: ESMEmbedder, out_path: str | Path, meta: dict) -> pd.DataFrame:
    """Embed every selected isoform (resumable through ``<out>.parts/``), average per gene, write
    the gene table. ``isoforms``: gene_id, gene_symbol, protein_id, sequence."""
    out_path = Path(out_path)
    parts_dir = parts_folder(out_path)
    claim_parts(
        parts_dir,
        {**meta, "window_overlap": embedder.params.window_overlap, "dim": embedder.dim, "layer": embedder.layer},
    )
    done = _finished_proteins(parts_dir)
    todo = isoforms[~isoforms.protein_id.isin(done)]
    todo = todo.iloc[np.argsort(-todo.sequence.str.len().to_numpy(), kind="stable")]
    if len(done):
        log.info("resuming: %d of %d sequences already embedded", len(done), len(isoforms))
    step = embedder.params.piece_sequences
    for k in tqdm(range(0, len(todo), step), desc="esm pieces", mininterval=5):
        piece = todo.iloc[k : k + step]
        emb = embedder.embed(piece.sequence.tolist(), progress=False)
        table = pa.table({"protein_id": piece.protein_id.to_numpy(), "embedding": matrix_column(emb)})
        with atomic_path(parts_dir / f"part-{len(done) + k:07d}.parquet", suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
    genes = _gene_means(isoforms, parts_dir)
    write_gene_table(genes, out_path, meta)
    _remove_parts(parts_dir)
    return genes


PARTS_STAMP = "produced_by.json"
PARTS_KIND = "esm-embed pieces"
# what an embedding run writes in ``<out>.parts/``: its stamp, its pieces and their temporaries
PARTS_ENTRY = re.compile(
    r"(produced_by\.json|part-\d{7}\.parquet)|\.(produced_by\.json|part-\d{7}\.parquet)\..*\.tmp(\.\w+)?"
)


def parts_folder(out_path: str | Path) -> Path:
    """Where the finished pieces of an embedding run wait until the gene table is written."""
    return Path(out_path).with_name(Path(out_path).name + ".parts")


def claim_parts(parts_dir: Path, produced_by: dict) -> None:
    """Resumable pieces are tied to what produced them (model and its weights, layer, isoform
    policy, windows): pieces of another setting are discarded, never mixed into this table. Only a
    folder that holds nothing but an embedding run's own files is ever discarded."""
    identity = json.dumps({"scencode_output": PARTS_KIND, "produced_by": produced_by}, sort_keys=True, default=str)
    stamp = parts_dir / PARTS_STAMP
    if parts_dir.exists() or parts_dir.is_symlink():
        _check_parts_are_ours(parts_dir)
    if parts_dir.exists() and (not stamp.exists() or stamp.read_text() != identity):
        pieces = len(list(parts_dir.glob("part-*.parquet")))
        log.warning(
            "discarding %d embedded pieces in %s: they were made with other settings (%s), not %s",
            pieces,
            parts_dir,
            stamp.read_text() if stamp.exists() else "unknown",
            identity,
        )
        _remove_parts(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        with atomic_path(stamp, suffix=".json") as tmp:
            Path(tmp).write_text(identity)


def _check_parts_are_ours(parts_dir: Path) -> None:
    """Refuse a ``.parts`` folder that holds anything an embedding run does not write (a user's
    file or folder, a link), or one that is a link or a file itself: it is not ours to delete."""
    if parts_dir.is_symlink() or not parts_dir.is_dir():
        raise ScencodeError(
            "the resumable pieces' path is a link or a file, not a folder written by esm-embed; move it away", parts_dir
        )
    entries = list(parts_dir.iterdir())
    foreign = sorted(e.name for e in entries if e.is_symlink() or not e.is_file() or not PARTS_ENTRY.fullmatch(e.name))
    if entries and not _is_stamp(parts_dir / PARTS_STAMP):
        foreign = foreign or [f"{PARTS_STAMP} not written by esm-embed"]
    if foreign:
        raise ScencodeError(
            f"the resumable pieces' folder holds entries esm-embed did not write ({', '.join(foreign[:5])}); "
            "refusing to delete it: move them out or choose another --out",
            parts_dir,
        )


def _is_stamp(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("scencode_output") == PARTS_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _remove_parts(parts_dir: Path) -> None:
    _check_parts_are_ours(parts_dir)  # again, just before: nothing else has appeared since
    for entry in parts_dir.iterdir():
        entry.unlink()
    parts_dir.rmdir()


def _finished_proteins(parts_dir: Path) -> set[str]:
    done = set()
    for part in sorted(parts_dir.glob("part-*.parquet")):
        done.update(pq.read_table(part, columns=["protein_id"]).column(0).to_pylist())
    return done


def _gene_means(isoforms: pd.DataFrame, parts_dir: Path) -> pd.DataFrame:
    parts = pa.concat_tables([pq.read_table(p) for p in sorted(parts_dir.glob("part-*.parquet"))])
    emb = column_matrix(parts, "embedding")
    dim = emb.shape[1]
    row = pd.Series(np.arange(len(emb)), index=parts.column("protein_id").to_pylist())
    iso = isoforms.assign(row=row.reindex(isoforms.protein_id).to_numpy())
    codes, genes = pd.factorize(iso.gene_id, sort=True)
    sums = np.zeros((len(genes), dim))
    np.add.at(sums, codes, emb[iso.row.to_numpy().astype(int)])
    n = np.bincount(codes, minlength=len(genes))
    symbols = iso.groupby("gene_id").gene_symbol.first().reindex(genes)
    lengths = np.bincount(codes, weights=iso.sequence.str.len().to_numpy(), minlength=len(genes)) / n
    return pd.DataFrame(
        {
            "gene_id": genes,
            "gene_symbol": symbols.fillna("").to_numpy(),
            "n_isoforms": n,
            "protein_length": lengths.astype(np.float32),
            "embedding": list((sums / n[:, None]).astype(np.float32)),
        }
    )


def tiny(out: OutputFile, layers: int = 2, dim: int = 32, heads: int = 2, seed: int = 0) -> None:
    """Save a randomly initialised tiny ESM-2 (fair-esm's class) at ``out``: the demo's and the tests' model."""
    save_tiny_esm2(out, layers=layers, dim=dim, heads=heads, seed=seed)


def run(
    fasta: list[Path],
    out: OutputFile,
    params: EmbedParams,
    model: str | None = None,
    weights: Path | None = None,
    sha256: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """ESM-2 gene embeddings of peptide FASTAs (the training organism's, and each other species'
    proteome: scencode.species): a released ``model`` by name (fetched to the torch hub cache) or
    local ``weights`` (a fair-esm checkpoint), optionally pinned by ``sha256``."""
    from ..settings import torch_threads
    from .proteins import read_peptide_fasta, select_isoforms

    if (model is None) == (weights is None):
        raise ScencodeError("give exactly one of --model (a released ESM-2 name) and --weights (a local file)")
    parts_dir = parts_folder(out)
    if parts_dir.exists() or parts_dir.is_symlink():  # refused before the model is loaded, not after
        _check_parts_are_ours(parts_dir)
    fastas = [fasta] if isinstance(fasta, (str, Path)) else list(fasta)
    isoforms = select_isoforms(pd.concat([read_peptide_fasta(f) for f in fastas], ignore_index=True), params.isoforms)
    weights_path, weights_sha256 = esm2_weights(model, weights, sha256)
    esm_model, alphabet = load_weights(weights_path)
    torch_threads(threads)
    embedder = ESMEmbedder(esm_model, alphabet, params)
    meta = {
        "source": "esm2",
        "model": model or weights_path.name,
        "layer": embedder.layer,
        "isoforms": params.isoforms,
        "long_sequences": params.long_sequences,
        "fasta": ",".join(Path(f).name for f in fastas),
        # a local weights file by content: a changed file with the same name is another model
        "weights_sha256": weights_sha256,
    }
    genes = embed_genes(isoforms, embedder, out, meta)
    log.info("ESM-2 gene embeddings: %d genes, dim %d, layer %d", len(genes), embedder.dim, embedder.layer)
    return genes
