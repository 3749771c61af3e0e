"""``scencode.model``: the cell transformer, its objective and how a trained one is loaded."""

import pytest
import torch

from scencode.errors import ScencodeError
from scencode.formats import Checkpoint, load_vocab, read_run_status
from scencode.model import Batch, load_model, masked_sse
from scencode.run_config import block_params


def test_the_block_parameters_are_attention_and_feed_forward():
    assert block_params(12, 512, 1024) == 12 * (4 * 512**2 + 2 * 512 * 1024)


def test_the_objective_counts_masked_real_positions_only():
    xnorm = torch.tensor([[1.0, 2.0, 3.0]])
    masked = torch.tensor([[True, True, False]])
    valid = torch.tensor([[True, False, True]])  # the second position is padding
    batch = Batch(torch.zeros(1, 3, dtype=torch.long), xnorm, xnorm, masked, valid=valid)
    sse, n = masked_sse(torch.zeros(1, 3), batch)
    assert (sse.item(), n.item()) == (1.0, 1)


def test_a_trained_model_loads_as_it_was_trained(tiny_model, demo_corpus):
    checkpoint = tiny_model.parent / read_run_status(tiny_model).checkpoint
    model, ckpt = load_model(checkpoint, torch.device("cpu"))
    vocab, digest = load_vocab(demo_corpus[1])
    assert not model.training and model.cfg.vocab_size == len(vocab) and ckpt.vocab_hash == digest
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt.model[key])


def test_a_checkpoint_of_another_model_version_says_to_retrain(tiny_model, tmp_path):
    ckpt = Checkpoint.read(tiny_model.parent / read_run_status(tiny_model).checkpoint)
    ckpt.model = {k: v for k, v in ckpt.model.items() if not k.startswith("blocks.0.")}
    ckpt.write(tmp_path / "old.pt")
    with pytest.raises(ScencodeError, match="old.pt: checkpoint does not fit this version of the model.*forcerun"):
        load_model(tmp_path / "old.pt", torch.device("cpu"))
