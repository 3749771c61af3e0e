import dataclasses
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from scencode.diagnostic import held_out_batches, masked_mse, verify_model_corpus
from scencode.errors import ScencodeError
from scencode.formats import Checkpoint
from scencode.loader import LoaderConfig
from scencode.model import load_model

LOADER = LoaderConfig(batch_size=16, context=64, bucket_batches=2, seed=3)  # the tiny model's training loader


def test_the_diagnostic_is_the_mean_masked_error_with_and_without_context_and_of_gene_means(tiny_model, demo_corpus):
    checkpoint, corpus = tiny_model.with_name("best.pt"), demo_corpus[0]
    measured = masked_mse(checkpoint, corpus, "test", LOADER)
    model, _ = load_model(checkpoint, torch.device("cpu"))
    sse, blind_sse, tokens = 0.0, 0.0, []
    with torch.no_grad():
        for batch in held_out_batches(corpus, "test", LOADER, mask=True, columns=()):
            target = batch.masked & batch.real
            sse += float(((model(batch)[0] - batch.xnorm)[target].double() ** 2).sum())
            blind = model(replace(batch, masked=batch.real))[0]  # every value hidden, scored at the same tokens
            blind_sse += float(((blind - batch.xnorm)[target].double() ** 2).sum())
            tokens.append(pd.DataFrame({"gene": batch.gene_ids[target], "x": batch.xnorm[target].double()}))
    tokens = pd.concat(tokens)
    by_gene = tokens.groupby("gene").x
    gene_mean_sse = ((tokens.x - by_gene.transform("mean")) ** 2).sum()
    assert measured["masked_tokens"] == len(tokens) > 0 and measured["cells"] > 0
    assert measured["masked_mse"] == pytest.approx(sse / len(tokens), rel=1e-6)
    assert measured["masked_mse_no_context"] == pytest.approx(blind_sse / len(tokens), rel=1e-6)
    assert measured["gene_mean_mse"] == pytest.approx(gene_mean_sse / len(tokens), rel=1e-9)
    assert np.isfinite([measured["masked_mse"], measured["masked_mse_no_context"]]).all()


def test_a_corpus_of_another_vocabulary_is_refused_naming_the_checkpoint(tiny_model, demo_corpus, tmp_path):
    checkpoint = tiny_model.with_name("best.pt")
    ckpt = dataclasses.replace(Checkpoint.read(checkpoint), vocab_hash="0" * 64)
    with pytest.raises(ScencodeError, match="best.pt: this model was trained on the vocabulary with hash 000000000000"):
        verify_model_corpus(checkpoint, ckpt, demo_corpus[0])
