"""The field's gene tasks (issue 34, part 3): downloaded from a local server as from their pinned
URLs, read safely, probed with AUROC beside their published anchors."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pandas as pd
import pytest
from helpers import leftovers

from scencode.errors import ScencodeError
from scencode.formats import SPECIAL_TOKENS, load_vocab
from scencode.gene_probes import ProbeParams, gene_probes
from scencode.gene_tasks import FIELD_TASKS, read_labels, run

DOSAGE_CSV = b"dosage_sensitive,dosage_insensitive\nENSG00000008197,ENSG00000010539\nENSG00000008441,ENSG00000011590\nENSG00000010818,\n"


def test_every_task_url_is_pinned_to_a_commit():
    for spec in FIELD_TASKS.values():
        revision = spec.url.split("/resolve/")[1].split("/")[0]
        assert len(revision) == 40 and int(revision, 16) >= 0  # a commit, never a branch such as main


def test_a_task_is_downloaded_checked_and_read(server, tmp_path):
    base, handler = server
    handler.routes["/dosage.csv"] = DOSAGE_CSV
    digest = hashlib.sha256(DOSAGE_CSV).hexdigest()
    out = tmp_path / "dosage_sensitive_tfs.labels"
    assert run("dosage_sensitive_tfs", out, sha256=digest, url=f"{base}/dosage.csv") == digest
    labels = read_labels(out, "dosage_sensitive_tfs")
    assert labels.to_dict() == {
        "ENSG00000008197": "dosage_sensitive",
        "ENSG00000008441": "dosage_sensitive",
        "ENSG00000010818": "dosage_sensitive",
        "ENSG00000010539": "dosage_insensitive",
        "ENSG00000011590": "dosage_insensitive",
    }
    with pytest.raises(ScencodeError, match="needs the file's sha256"):
        run("dosage_sensitive_tfs", tmp_path / "x.labels", url=f"{base}/dosage.csv")
    with pytest.raises(ScencodeError, match="sha256 mismatch"):
        run("dosage_sensitive_tfs", tmp_path / "y.labels", sha256="0" * 64, url=f"{base}/dosage.csv")
    assert not (tmp_path / "y.labels").exists() and leftovers(tmp_path) == []
    with pytest.raises(ScencodeError, match="unknown gene task 'dosage'"):
        run("dosage", tmp_path / "z.labels")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickled_task_is_read_as_plain_data_and_code_in_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "bivalent.labels"
    good.write_bytes(
        pickle.dumps({"bivalent": ["ENSG1", "ENSG2", "ENSG3"], "no_methylation": ["ENSG4", "ENSG5", "ENSG3"]})
    )
    labels = read_labels(good, "bivalent_vs_non_methylated")
    assert labels.to_dict() == {
        "ENSG1": "bivalent",
        "ENSG2": "bivalent",
        "ENSG4": "no_methylation",
        "ENSG5": "no_methylation",
    }
    evil = tmp_path / "evil.labels"
    evil.write_bytes(pickle.dumps({"a": [_Payload()], "b": ["x"]}))
    with pytest.raises(ScencodeError, match="only plain data is read") as caught:
        read_labels(evil, "bivalent_vs_non_methylated")
    assert str(evil) in str(caught.value) and not (tmp_path / "pwned").exists()
    (tmp_path / "one.labels").write_bytes(pickle.dumps({"a": ["g1", "g2"]}))
    with pytest.raises(ScencodeError, match="two classes"):
        read_labels(tmp_path / "one.labels", "bivalent_vs_non_methylated")


def test_tasks_are_probed_with_auroc_beside_their_published_anchors(demo_corpus, tmp_path):
    vocab = demo_corpus[1]
    genes = load_vocab(vocab)[0].gene_id[len(SPECIAL_TOKENS) :].to_numpy()
    rng = np.random.default_rng(0)
    picked = rng.choice(genes, 120, replace=False)
    table = pd.DataFrame({"dosage_sensitive": picked[:50], "dosage_insensitive": picked[50:100]})
    labels = tmp_path / "dosage.labels"
    table.to_csv(labels, index=False)
    probes = gene_probes([], vocab, None, ProbeParams(seed=0), {"dosage_sensitive_tfs": labels})
    task = probes[probes.group == "gene_probe_task_dosage_sensitive_tfs"]
    random = task[(task.configuration == "reference-random_table") & (task.metric == "logreg_auroc")].value
    assert len(random) == 1 and abs(random.iloc[0] - 0.5) < 0.2  # a random table knows nothing of dosage
    anchors = task[task.gene_encoding == "published"].set_index("expression_encoding").value
    assert anchors.to_dict() == {"GenePT": 0.89, "Geneformer": 0.91}
    assert "100 genes, 2 classes" in task[task.metric == "logreg_auroc"].note.iloc[0]
