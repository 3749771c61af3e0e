import numpy as np
import pytest
import torch
from helpers import cell_embeddings, mean_masked_mse

from scencode.encodings import (
    EXPRESSION_ENCODERS,
    GENE_ENCODERS,
    AutoDiscretisationExpression,
    SoftBinExpression,
    log_bins,
    lookup,
    quantile_bins,
)
from scencode.errors import ScencodeError
from scencode.model import Batch, CellTransformer, ModelConfig, Padded

D, VOCAB = 16, 30
TABLE = torch.randn(VOCAB, 12)


def batch(b=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 50, (b, length), generator=g).float()
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[0, 5:] = False
    counts[~valid] = 0
    xnorm = torch.log1p(counts / counts.sum(1, keepdim=True) * 1e4)
    ids = torch.randint(2, VOCAB, (b, length), generator=g) * valid
    return ids, counts, xnorm, valid


@pytest.mark.parametrize("name", sorted(EXPRESSION_ENCODERS))
def test_every_expression_encoder_gives_one_d_vector_per_token(name):
    ids, counts, xnorm, valid = batch()
    out = EXPRESSION_ENCODERS[name](D)(counts, xnorm, Padded(valid))
    assert out.shape == (3, 7, D) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(GENE_ENCODERS))
def test_every_gene_encoder_gives_one_d_vector_per_token(name):
    ids, *_ = batch()
    out = GENE_ENCODERS[name](D, vocab_size=VOCAB, gene_table=TABLE)(ids)
    assert out.shape == (3, 7, D)


def test_hard_bins_follow_per_cell_quantiles_and_clamp():
    xnorm = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    valid = torch.ones_like(xnorm, dtype=torch.bool)
    bins = quantile_bins(xnorm, Padded(valid), n_bins=6)  # boundaries at quantiles 0, .25, .5, .75, 1 of 1..5
    assert bins.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert quantile_bins(xnorm * 100, Padded(valid), 6).tolist() == bins.tolist()  # per-cell: scale-free
    many = torch.rand(4, 300) + 0.01
    b = quantile_bins(many, Padded(torch.ones_like(many, dtype=torch.bool)), 50)
    assert b.min() == 1 and b.max() == 49 and (b == 49).any()


def test_hard_bins_break_ties_deterministically():
    xnorm = torch.tensor([[2.0, 1.0, 2.0, 3.0, 2.0, 1.0]])
    valid = torch.ones_like(xnorm, dtype=torch.bool)
    bins = quantile_bins(xnorm, Padded(valid), 10)
    assert bins[0, 0] == bins[0, 2] == bins[0, 4] and bins[0, 1] == bins[0, 5]
    perm = torch.tensor([3, 5, 0, 4, 1, 2])
    assert quantile_bins(xnorm[:, perm], Padded(valid), 10).tolist() == bins[:, perm].tolist()


def test_hard_bins_ignore_padding():
    xnorm = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    valid = torch.tensor([[True, True, True, False]])
    assert (
        quantile_bins(xnorm, Padded(valid), 4)[0, :3].tolist()
        == quantile_bins(xnorm[:, :3], Padded(valid[:, :3]), 4)[0].tolist()
    )


def test_hard_bins_on_cpu_equal_torch_nanquantile_and_searchsorted():
    """The CPU path (numpy's sort, bins counted from ranks) gives bit for bit the bins of the
    definition: boundaries from torch.nanquantile, each value's bin from torch.searchsorted."""
    from scencode.encodings import padded_quantile_bins

    def definition(xnorm, valid, n_bins):
        nonzero = valid & (xnorm > 0)
        values = torch.where(nonzero, xnorm, torch.full_like(xnorm, float("nan")))
        q = torch.linspace(0, 1, n_bins - 1)
        bounds = torch.nan_to_num(torch.nanquantile(values, q, dim=1).T.contiguous(), nan=float("inf"))
        bins = torch.searchsorted(bounds, xnorm.contiguous(), right=True)
        return torch.where(nonzero, bins.clamp(1, n_bins - 1), torch.zeros_like(bins))

    rng = np.random.default_rng(1)
    for _ in range(150):
        cells, length = int(rng.integers(1, 200)), int(rng.integers(1, 300))
        counts = rng.integers(0, int(rng.choice([2, 3, 30, 1000])), (cells, length))  # many ties, some empty cells
        xnorm = torch.from_numpy(np.log1p(counts / rng.integers(200, 5000, (cells, 1)) * 1e4).astype(np.float32))
        valid = torch.from_numpy(rng.random((cells, length)) < rng.random() + 0.2)
        n_bins = int(rng.choice([3, 11, 51]))
        assert torch.equal(padded_quantile_bins(xnorm, valid, n_bins), definition(xnorm, valid, n_bins))


def test_log_bins_are_floor_log2_of_counts_plus_one_clamped_at_ten():
    counts = torch.tensor([0, 1, 2, 3, 7, 8, 1023, 1024, 5000])
    assert log_bins(counts).tolist() == [0, 1, 1, 2, 3, 3, 10, 10, 10]


@pytest.mark.parametrize("cls", [SoftBinExpression, AutoDiscretisationExpression])
def test_soft_weights_sum_to_one(cls):
    encoder = cls(D)
    w = encoder.weights(torch.rand(5, 9) * 6)
    assert torch.allclose(w.sum(-1), torch.ones(5, 9)) and (w >= 0).all()


@pytest.mark.parametrize("cls", [SoftBinExpression, AutoDiscretisationExpression])
def test_soft_weights_computed_once_per_distinct_value_equal_those_of_every_token(cls):
    torch.manual_seed(0)
    encoder = cls(D)
    xnorm = torch.log1p(torch.randint(0, 30, (64, 40)).float() * 1.7)  # repeated values, as counts give
    per_token = encoder.bin_weights(xnorm)
    once = encoder.weights(xnorm)
    assert torch.equal(once, per_token)  # each row is the MLP of the same value
    grads = []
    for w in (per_token, once):
        encoder.zero_grad()
        (w * torch.linspace(-1, 1, w.shape[-1])).sum().backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    # the same sums over repeated values, in another order: float32 rounding of the largest entries only
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


@pytest.mark.parametrize("name", ["esm2", "esm2_permuted", "random_frozen"])
def test_frozen_tables_stay_frozen(name):
    encoder = GENE_ENCODERS[name](D, vocab_size=VOCAB, gene_table=TABLE)
    before = encoder.table.clone()
    assert all(p is not encoder.table for p in encoder.parameters())
    opt = torch.optim.SGD(encoder.parameters(), lr=1.0)
    ids, *_ = batch()
    encoder(ids).pow(2).sum().backward()
    opt.step()
    assert torch.equal(encoder.table, before)
    if name == "esm2":
        assert torch.equal(encoder.table, TABLE)
    elif name == "random_frozen":
        assert encoder.table.shape == TABLE.shape and not torch.allclose(encoder.table, TABLE)


def test_unknown_encoder_names_list_the_registered_ones():
    with pytest.raises(ScencodeError, match="registered: .*continuous.*hard.*log.*soft"):
        lookup(EXPRESSION_ENCODERS, "expression", "binned")
    with pytest.raises(ScencodeError, match="unknown gene encoding 'word2vec'"):
        CellTransformer(ModelConfig(VOCAB, gene_encoding="word2vec", d_model=D, n_layers=1, n_heads=2, d_ff=8))


def test_esm2_without_a_table_is_refused():
    with pytest.raises(ScencodeError, match="needs a gene embedding table"):
        GENE_ENCODERS["esm2"](D, vocab_size=VOCAB)


@pytest.mark.parametrize("bad", [dict(d_model=30, n_heads=4), dict(n_layers=0), dict(dropout=1.5)])
def test_invalid_dimensions_are_refused(bad):
    with pytest.raises(ScencodeError):
        CellTransformer(ModelConfig(VOCAB, **{**dict(d_model=D, n_layers=1, n_heads=2, d_ff=8), **bad}))


def test_masked_loss_and_pooled_embeddings_ignore_padding():
    torch.manual_seed(0)
    model = CellTransformer(ModelConfig(VOCAB, d_model=D, n_layers=2, n_heads=2, d_ff=8, dropout=0.0)).eval()
    ids, counts, xnorm, valid = batch()
    masked = torch.zeros_like(valid)
    emb = cell_embeddings(model, Batch(ids, counts, xnorm, masked, valid=valid))
    # the first cell's padded tail changes nothing
    ids2, counts2, xnorm2 = ids.clone(), counts.clone(), xnorm.clone()
    ids2[0, 5:], counts2[0, 5:], xnorm2[0, 5:] = 7, 3.0, 1.5
    assert torch.allclose(cell_embeddings(model, Batch(ids2, counts2, xnorm2, masked, valid=valid)), emb, atol=1e-5)
    masked[:, :3] = True
    loss = mean_masked_mse(model, Batch(ids, counts, xnorm, masked, valid=valid))
    pred, sse, n = model(Batch(ids, counts, xnorm, masked, valid=valid))
    assert torch.isclose(loss, ((pred[:, :3] - xnorm[:, :3]) ** 2).mean(), atol=1e-6)
    assert n == 3 * len(ids) and torch.isclose(sse / n, loss)


def test_esm2_permuted_keeps_the_rows_and_breaks_the_gene_correspondence():
    table = torch.randn(200, 12)
    permuted = GENE_ENCODERS["esm2_permuted"](D, vocab_size=200, gene_table=table, seed=5).table
    assert torch.equal(permuted[:2], table[:2])  # <pad>, <cls>
    # the same multiset of rows (same geometry), almost none at its own gene
    assert torch.equal(permuted[2:].sort(0).values, table[2:].sort(0).values)
    assert {tuple(r.tolist()) for r in permuted} == {tuple(r.tolist()) for r in table}
    assert (permuted[2:] == table[2:]).all(1).float().mean() < 0.05
    again = GENE_ENCODERS["esm2_permuted"](D, vocab_size=200, gene_table=table, seed=5).table
    other = GENE_ENCODERS["esm2_permuted"](D, vocab_size=200, gene_table=table, seed=6).table
    assert torch.equal(again, permuted) and not torch.equal(other, permuted)


def test_frozen_tables_are_read_standardised_with_one_map_for_esm2_and_its_permuted_control():
    # a protein-model table: one dominant shared direction, as ESM-2's (the demo's: mean cosine 0.90)
    torch.manual_seed(0)
    table = torch.randn(200, 12) * 0.1 + torch.linspace(1, 3, 12)
    table[:2] = 0  # <pad>, <cls>
    table[50] = 0  # a gene without a protein embedding (missing_genes: zero)
    esm2 = GENE_ENCODERS["esm2"](D, vocab_size=200, gene_table=table)
    read = (esm2.table[2:] - esm2.centre) / esm2.scale
    genes = read[torch.arange(198) != 48]
    assert torch.allclose(genes.mean(0), torch.zeros(12), atol=1e-5) and torch.allclose(
        genes.std(0), torch.ones(12), atol=1e-4
    )
    cosine = torch.nn.functional.normalize(genes, dim=1) @ torch.nn.functional.normalize(genes, dim=1).T
    assert cosine[~torch.eye(len(genes), dtype=torch.bool)].mean().abs() < 0.05
    # the control permutes rows: the same statistics, hence the same fixed map
    permuted = GENE_ENCODERS["esm2_permuted"](D, vocab_size=200, gene_table=table, seed=5)
    assert torch.allclose(permuted.centre, esm2.centre) and torch.allclose(permuted.scale, esm2.scale)
    raw = GENE_ENCODERS["esm2"](D, vocab_size=200, gene_table=table, standardize=False)
    assert torch.equal(raw.centre, torch.zeros(12)) and torch.equal(raw.scale, torch.ones(12))
    # checkpoints carry the map the model was trained with
    assert {"genes.centre", "genes.scale"} <= set(
        CellTransformer(
            ModelConfig(200, gene_encoding="esm2", d_model=D, n_layers=1, n_heads=2, d_ff=8), gene_table=table
        ).state_dict()
    )


def realistic_batches(n=4, cells=16, length=120, vocab=VOCAB):
    """Cells with negative-binomial-like counts over a heavy-tailed gene profile, as the loader gives them."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        means = torch.distributions.Gamma(0.6, 0.3).sample((cells, length))
        counts = torch.poisson(means, generator=g).clamp(min=1)
        valid = torch.ones(cells, length, dtype=torch.bool)
        valid[: cells // 2, length // 2 :] = False  # padding
        counts[~valid] = 0
        xnorm = torch.log1p(counts / (counts.sum(1, keepdim=True) * 3) * 1e4)
        masked = (torch.rand(cells, length, generator=g) < 0.5) & valid
        ids = torch.randint(2, vocab, (cells, length), generator=g) * valid
        out.append(Batch(ids, counts, xnorm, masked, valid=valid))
    return out


@pytest.mark.parametrize("expression", sorted(EXPRESSION_ENCODERS))
@pytest.mark.parametrize("gene", sorted(GENE_ENCODERS))
def test_every_encoding_starts_at_unit_scale(gene, expression):
    """The initialisation policy: no gene or expression encoding starts dominant (both components
    have RMS 1 on real positions) and the head starts at the mean target."""
    torch.manual_seed(0)
    table = torch.randn(200, 12) * 0.1 + torch.randn(12)  # a shared direction, as ESM-2 tables have
    model = CellTransformer(
        ModelConfig(200, gene, expression, d_model=D, n_layers=1, n_heads=2, d_ff=8), gene_table=table
    )
    batches = realistic_batches(vocab=200)
    model.calibrate(batches)
    for b in realistic_batches(vocab=200)[:2]:
        rms = model.component_rms(b)
        assert rms["gene"] == pytest.approx(1.0, rel=0.15) and rms["expression"] == pytest.approx(1.0, rel=0.15)
    target = torch.cat([b.xnorm[b.valid] for b in batches]).mean()
    pred = model.eval()(batches[0])[0]
    assert torch.allclose(pred[batches[0].valid], target.expand_as(pred[batches[0].valid]))


def packed(batch: Batch) -> Batch:
    from scencode.sampling import pack

    arrays = {k: getattr(batch, k).numpy() for k in ("gene_ids", "counts", "xnorm", "masked", "valid")}
    return Batch(**{k: torch.from_numpy(v) for k, v in pack(arrays).items()})


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("expression", ["continuous", "hard"])
def test_packed_batches_give_the_padded_loss_gradients_and_embeddings(expression, nested):
    """Packing drops padding, nothing else: same predictions at real positions, same masked loss, same
    gradients, same cell embeddings, through the CPU's padded-view attention and through the jagged
    nested-tensor attention that CUDA uses."""
    torch.manual_seed(0)
    model = CellTransformer(
        ModelConfig(VOCAB, "learned", expression, d_model=D, n_layers=2, n_heads=2, d_ff=8, dropout=0.0)
    )
    padded = realistic_batches(n=1)[0]
    flat = packed(padded)
    assert flat.gene_ids.shape == (int(padded.valid.sum()),) and flat.offsets[-1] == padded.valid.sum()
    losses, grads = [], []
    for batch, cells in ((padded, None), (flat, nested)):
        model.zero_grad()
        model.nested_attention = cells
        loss = mean_masked_mse(model, batch)
        if cells is not None:
            emb = cell_embeddings(model, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert torch.allclose(cell_embeddings(model, padded), emb, atol=1e-5)
    assert torch.allclose(model.eval()(padded)[0][padded.valid], model(flat)[0], atol=1e-5)
    assert flat.offsets is not None and flat.valid is None


def test_rank_tokens_are_ordered_by_expression_over_the_genes_median():
    """Rank 0 is the gene with the highest count / median; masked and padded positions are left
    out of the order (a masked gene's rank would tell its value); packed gives the padded ranks."""
    from scencode.encodings import RankValueExpression

    medians = torch.tensor([1.0, 1.0, 2.0, 0.5, 4.0, 1.0])
    encoder = RankValueExpression(D, vocab_size=6, gene_medians=medians)
    genes = torch.tensor([[2, 3, 4, 5, 0], [5, 4, 3, 2, 1]])
    counts = torch.tensor([[4.0, 1.0, 2.0, 3.0, 0.0], [1.0, 8.0, 1.0, 6.0, 9.0]])
    valid = torch.tensor([[True, True, True, True, False], [True] * 5])
    masked = torch.tensor([[False] * 5, [False, False, False, False, True]])
    ranks = encoder.ranks(counts, valid, genes, masked)
    # cell 0: count / median = 2, 2, 0.5, 3 → gene 5 first; equal keys keep the loader's order
    assert ranks[0, :4].tolist() == [1, 2, 3, 0]
    # cell 1: 1, 2, 2, 3 and the masked gene 1 (count 9) last whatever its count
    assert ranks[1].tolist() == [3, 1, 2, 0, 4]
    flipped = encoder.ranks(counts, valid, genes, masked=None)[1]  # unmasked: the highest count leads
    assert flipped[4] == 0
    batch = Batch(genes, counts, torch.log1p(counts), masked, valid=valid)
    padded = encoder(counts, batch.xnorm, Padded(valid), gene_ids=genes, masked=masked)
    one = packed(batch)
    packed_out = encoder(one.counts, one.xnorm, one.layout(False), gene_ids=one.gene_ids, masked=one.masked)
    assert torch.allclose(padded[valid], packed_out)
