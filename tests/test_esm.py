import gzip

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import GENES

from scencode.errors import ScencodeError
from scencode.esm.embed import (
    MAX_RESIDUES,
    EmbedParams,
    ESMEmbedder,
    embed_genes,
    esm2_weights,
    load_weights,
    save_tiny_esm2,
    token_budget_batches,
    windows,
)
from scencode.esm.gene_tables import coverage_report, import_table
from scencode.esm.proteins import read_peptide_fasta, select_isoforms
from scencode.formats import read_gene_table

RNG = np.random.default_rng(0)
AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def protein(n: int) -> str:
    return "".join(RNG.choice(AMINO, n))


def header(pid, gene, transcript, symbol, extra=""):
    return (
        f">{pid} pep chromosome:GRCh38:1:1:100:1 gene:{gene} transcript:{transcript} "
        f"gene_biotype:protein_coding transcript_biotype:protein_coding gene_symbol:{symbol} {extra}"
    )


@pytest.fixture
def fasta(tmp_path):
    records = [
        (header("ENSP01.1", GENES["TP53"] + ".18", "ENST01.2", "TP53"), protein(40)),
        (header("ENSP02.1", GENES["TP53"] + ".18", "ENST02.2", "TP53", "Ensembl_canonical"), protein(30)),
        (header("ENSP03.1", GENES["GAPDH"] + ".3", "ENST03.1", "GAPDH"), protein(25)),
        (header("ENSP04.1", GENES["ALB"] + ".1", "ENST04.1", "ALB"), protein(50)),
        (header("ENSP05.1", GENES["ALB"] + ".1", "ENST05.1", "ALB"), protein(60)),
    ]
    path = tmp_path / "pep.fa.gz"
    with gzip.open(path, "wt") as fh:
        for h, s in records:
            fh.write(f"{h}\n{s[:20]}\n{s[20:]}*\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("esm") / "tiny.pt"
    save_tiny_esm2(path, layers=2, dim=16, heads=2, seed=0)
    return path


def test_ensembl_peptide_fasta_is_parsed_with_versions_stripped(fasta):
    proteins = read_peptide_fasta(fasta)
    assert len(proteins) == 5 and set(proteins.gene_id) == {GENES["TP53"], GENES["GAPDH"], GENES["ALB"]}
    assert proteins.canonical.sum() == 1 and not proteins.sequence.str.contains(r"\*").any()
    assert proteins.gene_symbol.iloc[0] == "TP53" and proteins.transcript_id.iloc[0] == "ENST01"


def test_isoform_policies(fasta):
    proteins = read_peptide_fasta(fasta)
    assert len(select_isoforms(proteins, "mean")) == 5
    longest = select_isoforms(proteins, "longest").set_index("gene_id")
    assert longest.loc[GENES["TP53"], "protein_id"] == "ENSP01.1" and longest.loc[GENES["ALB"], "length"] == 60
    canonical = select_isoforms(proteins, "canonical").set_index("gene_id")
    assert canonical.loc[GENES["TP53"], "protein_id"] == "ENSP02.1"  # tagged, though shorter
    assert canonical.loc[GENES["ALB"], "protein_id"] == "ENSP05.1"  # untagged: the longest


@pytest.mark.parametrize(
    "content, message",
    [
        (">ENSP1 pep transcript:ENST1\nMKV\n", "no 'gene:' field"),
        (">ENSP1 pep gene:ENSG00000141510\n>ENSP2 pep gene:ENSG00000141510\nMKV\n", "no sequence"),
        (">ENSP1 pep gene:TP53\nMKV\n", "not an Ensembl gene id"),
        ("MKVLA\n", "sequence before the first"),
        (">ENSP1 pep gene:ENSG00000141510\nMKV1234\n", "not an amino-acid sequence"),
        ("", "no FASTA record"),
    ],
)
def test_malformed_fasta_is_rejected_with_line_and_file(tmp_path, content, message):
    path = tmp_path / "bad.fa"
    path.write_text(content)
    with pytest.raises(ScencodeError, match=message) as err:
        read_peptide_fasta(path)
    assert "bad.fa" in str(err.value)


def test_truncated_gzip_fasta_is_rejected(fasta, tmp_path):
    data = fasta.read_bytes()
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(data[: len(data) - 20])
    with pytest.raises(ScencodeError, match="truncated or unreadable"):
        read_peptide_fasta(cut)


def test_embedding_is_the_mean_over_residues_of_the_chosen_layer(tiny):
    model, alphabet = load_weights(tiny)
    seqs = [protein(12), protein(31), protein(5)]
    for layer in (1, 2):
        got = ESMEmbedder(model, alphabet, EmbedParams(layer=layer, device="cpu")).embed(seqs, progress=False)
        _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])
        with torch.no_grad():
            reps = model(tokens, repr_layers=[layer])["representations"][layer]
        expected = np.stack([reps[i, 1 : len(s) + 1].mean(0).numpy() for i, s in enumerate(seqs)])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_long_sequences_are_windowed_and_residues_averaged_once(tiny):
    model, alphabet = load_weights(tiny)
    seq = protein(2500)
    spans = windows(len(seq), "window", 256)
    assert spans[0][0] == 0 and spans[-1][1] == 2500 and all(b - a == MAX_RESIDUES for a, b in spans)
    embedder = ESMEmbedder(model, alphabet, EmbedParams(device="cpu"))
    got = embedder.embed([seq], progress=False)[0]
    total, count = np.zeros((2500, 16)), np.zeros(2500)
    for a, b in spans:
        total[a:b] += embedder.represent([seq[a:b]])[0, 1 : b - a + 1].numpy()
        count[a:b] += 1
    np.testing.assert_allclose(got, (total / count[:, None]).mean(0), rtol=1e-4, atol=1e-5)
    truncated = ESMEmbedder(model, alphabet, EmbedParams(device="cpu", long_sequences="truncate"))
    np.testing.assert_allclose(
        truncated.embed([seq], progress=False)[0],
        embedder.represent([seq[:MAX_RESIDUES]])[0, 1 : MAX_RESIDUES + 1].numpy().mean(0),
        rtol=1e-4,
        atol=1e-5,
    )


def test_token_budget_batches_cover_every_sequence_within_budget():
    lengths = RNG.integers(30, 1022, 500)
    batches = token_budget_batches(lengths, 8192)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(len(b) * (lengths[b].max() + 2) <= 8192 for b in batches)


class Killed(Exception):
    """Stands in for the job being killed mid-way."""


def test_killed_embedding_job_resumes_where_it_stopped(fasta, tiny, tmp_path, monkeypatch):
    model, alphabet = load_weights(tiny)
    isoforms = select_isoforms(read_peptide_fasta(fasta), "mean")
    params = EmbedParams(device="cpu", piece_sequences=2)
    full = embed_genes(isoforms, ESMEmbedder(model, alphabet, params), tmp_path / "full.parquet", {})

    embedder = ESMEmbedder(model, alphabet, params)
    calls, real, kill = [], embedder.embed, [True]

    def dies_on_second_piece(seqs, progress=True):
        calls.append(len(seqs))
        if len(calls) == 2 and kill:
            kill.clear()
            raise Killed
        return real(seqs, progress)

    monkeypatch.setattr(embedder, "embed", dies_on_second_piece)
    with pytest.raises(Killed):
        embed_genes(isoforms, embedder, tmp_path / "resumed.parquet", {})
    assert not (tmp_path / "resumed.parquet").exists()
    calls.clear()
    embed_genes(isoforms, embedder, tmp_path / "resumed.parquet", {})
    assert sum(calls) == len(isoforms) - 2  # the first piece was not embedded again
    ids_a, emb_a, _ = read_gene_table(tmp_path / "full.parquet")
    ids_b, emb_b, _ = read_gene_table(tmp_path / "resumed.parquet")
    assert list(ids_a) == list(ids_b) == sorted(full.gene_id)
    np.testing.assert_allclose(emb_a, emb_b, rtol=1e-6)
    # isoforms of one gene are averaged
    assert full.set_index("gene_id").n_isoforms[GENES["TP53"]] == 2


def test_bad_model_inputs(tmp_path):
    with pytest.raises(ScencodeError, match="unknown ESM-2 model 'esm3_big'"):
        esm2_weights("esm3_big")
    not_esm = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, not_esm)
    with pytest.raises(ScencodeError, match="other.pt: not an ESM-2 checkpoint"):
        load_weights(not_esm)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ScencodeError, match="garbage.pt: not a readable torch checkpoint"):
        load_weights(garbage)


def test_import_transcriptformer_layouts(tmp_path):
    ids = [GENES["TP53"] + ".5", GENES["ALB"]]
    vectors = RNG.normal(size=(2, 8)).astype(np.float32)
    per_gene = tmp_path / "per_gene.h5"
    with h5py.File(per_gene, "w") as f:
        for i, v in zip(ids, vectors):
            f[i] = v
    matrix = tmp_path / "matrix.h5"
    with h5py.File(matrix, "w") as f:
        f["keys"] = np.array(ids, dtype="S")
        f["arrays"] = vectors
    for path in (per_gene, matrix):
        report = import_table("transcriptformer", path, tmp_path / "out.parquet", expected_dim=8)
        got_ids, got, meta = read_gene_table(tmp_path / "out.parquet")
        assert report["genes"] == 2 and meta["source"] == "import:transcriptformer"
        np.testing.assert_array_equal(got[list(got_ids).index(GENES["ALB"])], vectors[1])
    with pytest.raises(ScencodeError, match="dimension 8, config expects 2560"):
        import_table("transcriptformer", matrix, tmp_path / "bad.parquet", expected_dim=2560)
    bad_keys = tmp_path / "symbols.h5"
    with h5py.File(bad_keys, "w") as f:
        f["TP53"] = vectors[0]
    with pytest.raises(ScencodeError, match="not Ensembl gene ids"):
        import_table("transcriptformer", bad_keys, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def test_import_uce_maps_symbols_safely(tmp_path, gene_table):
    path = tmp_path / "uce.pt"
    torch.save({"TP53": torch.ones(6), "GAPDH": torch.zeros(6), "NOT-A-GENE": torch.ones(6)}, path)
    report = import_table("uce", path, tmp_path / "out.parquet", gene_table)
    ids, emb, _ = read_gene_table(tmp_path / "out.parquet")
    assert sorted(ids) == sorted([GENES["TP53"], GENES["GAPDH"]]) and report["unmatched"] == 1
    torch.save([torch.ones(6)], path)
    with pytest.raises(ScencodeError, match="expected a dict mapping gene symbols"):
        import_table("uce", path, tmp_path / "bad.parquet", gene_table)


def test_coverage_reports_missing_genes_and_rejects_no_overlap(gene_table):
    embedded = pd.Index([GENES["TP53"], GENES["ALB"]])
    report = coverage_report(embedded, pd.Index([GENES["TP53"], GENES["GAPDH"]]), gene_table)
    assert report["dataset_genes_with_embedding"] == 1 and report["dataset_genes_missing_examples"] == [GENES["GAPDH"]]
    assert report["by_biotype"]["protein_coding"]["with_embedding"] == 2
    with pytest.raises(ScencodeError, match="no gene of the 1 dataset genes has a protein embedding"):
        coverage_report(embedded, pd.Index([GENES["CD3E"]]), gene_table)


def test_pieces_of_another_model_are_discarded_not_mixed_in(fasta, tiny, tmp_path, monkeypatch, caplog):
    """Killed with model A, rerun with model B: every gene comes from B (and the log says why)."""
    save_tiny_esm2(tmp_path / "b.pt", layers=2, dim=16, heads=2, seed=1)
    model_a, alphabet = load_weights(tiny)
    model_b, _ = load_weights(tmp_path / "b.pt")
    isoforms = select_isoforms(read_peptide_fasta(fasta), "mean")
    params = EmbedParams(device="cpu", piece_sequences=2)
    clean_b = embed_genes(
        isoforms, ESMEmbedder(model_b, alphabet, params), tmp_path / "clean.parquet", {"model": "b.pt"}
    )
    embedder_a = ESMEmbedder(model_a, alphabet, params)
    calls, real = [], embedder_a.embed

    def dies_on_second_piece(seqs, progress=True):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(seqs, progress)

    monkeypatch.setattr(embedder_a, "embed", dies_on_second_piece)
    with pytest.raises(Killed):
        embed_genes(isoforms, embedder_a, tmp_path / "out.parquet", {"model": "a.pt"})
    assert list((tmp_path / "out.parquet.parts").glob("part-*.parquet"))  # model A's piece is there
    mixed = embed_genes(isoforms, ESMEmbedder(model_b, alphabet, params), tmp_path / "out.parquet", {"model": "b.pt"})
    assert "discarding 1 embedded pieces" in caplog.text
    np.testing.assert_array_equal(np.stack(mixed.embedding), np.stack(clean_b.embedding))


@pytest.mark.parametrize(
    "bad", [{"long_sequences": "chunk"}, {"window_overlap": 2000}, {"token_budget": 0}, {"device": "tpu"}]
)
def test_invalid_embedding_settings_are_refused_naming_the_key(tiny, bad):
    model, alphabet = load_weights(tiny)
    with pytest.raises(ScencodeError, match=f"esm.embed.{next(iter(bad))}"):
        ESMEmbedder(model, alphabet, EmbedParams(**bad))
