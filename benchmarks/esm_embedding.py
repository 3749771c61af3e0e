"""ESM-2 embedding throughput: token-budget batching of length-sorted sequences vs naive fixed-size
batches, over the same realistic length distribution (human proteome: median ~420 residues, long
tail past 3,000; long sequences windowed in both). The model is ESM-2 8M's architecture
(6 layers, 320 dims) with random weights built from fair-esm's class: the speed is the
architecture's, no weights are downloaded. Prints one JSON object on its last line.

    python benchmarks/esm_embedding.py [--sequences 300] [--batch-size 8] [--token-budget 8192]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from scencode.esm.embed import EmbedParams, ESMEmbedder, load_weights, save_tiny_esm2, windows

AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def human_like_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    # log-normal fitted to the human proteome: median 420, ~1% above 3,000 residues
    return np.clip(rng.lognormal(np.log(420), 0.75, n), 30, 8000).astype(int)


def naive_embed(embedder: ESMEmbedder, seqs: list[str], batch_size: int) -> None:
    """Fixed-size batches in input order, padded to each batch's longest window."""
    pieces = [s[a:b] for s in seqs for a, b in windows(len(s), "window", 256)]
    for k in range(0, len(pieces), batch_size):
        embedder.represent(pieces[k : k + batch_size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lengths = human_like_lengths(args.sequences, rng)
    seqs = ["".join(rng.choice(AMINO, n)) for n in lengths]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "esm2_t6_8M_random.pt"
        save_tiny_esm2(weights, layers=6, dim=320, heads=20)
        model, alphabet = load_weights(weights)
    embedder = ESMEmbedder(model, alphabet, EmbedParams(token_budget=args.token_budget, device=args.device))
    embedder.embed(seqs[:4], progress=False)  # warm-up
    start = time.perf_counter()
    embedder.embed(seqs, progress=False)
    budget_s = time.perf_counter() - start
    start = time.perf_counter()
    naive_embed(embedder, seqs, args.batch_size)
    naive_s = time.perf_counter() - start
    residues = int(lengths.sum())
    print(
        json.dumps(
            {
                "device": str(embedder.device),
                "sequences": len(seqs),
                "residues": residues,
                "median_length": float(np.median(lengths)),
                "max_length": int(lengths.max()),
                "token_budget": {"residues_per_s": residues / budget_s, "sequences_per_s": len(seqs) / budget_s},
                "naive_fixed_batches": {
                    "batch_size": args.batch_size,
                    "residues_per_s": residues / naive_s,
                    "sequences_per_s": len(seqs) / naive_s,
                },
                "speedup": naive_s / budget_s,
            }
        )
    )


if __name__ == "__main__":
    main()
