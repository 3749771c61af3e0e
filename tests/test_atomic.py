"""Outputs scencode owns (issue 31): a folder is replaced only when it is scencode's own output of
that kind and nothing was added to it; symlinked outputs are followed; a path that reads as an
option is refused; a rename is the only way an output appears."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from helpers import leftovers

from scencode.atomic import OWNED, atomic_dir, atomic_path, check_writable, ownership
from scencode.errors import ScencodeError
from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus


def write_output(target: Path, kind: str = "tokenize", files: dict[str, str] | None = None) -> None:
    with atomic_dir(target, kind=kind) as tmp:
        for name, text in (files or {"part-00000.parquet": "new"}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links as their target, folders as '/')."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else "/" if path.is_dir() else path.read_text()
    return out


def test_an_output_records_every_file_and_replaces_only_its_own_earlier_output(tmp_path):
    target = tmp_path / "corpus"
    write_output(target, files={"a.parquet": "1", "sub/b.parquet": "22"})
    record = json.loads((target / OWNED).read_text())
    assert record["scencode_output"] == "tokenize"
    assert {k: v["bytes"] for k, v in record["files"].items()} == {"a.parquet": 1, "sub/b.parquet": 2}
    write_output(target, files={"c.parquet": "3"})  # its own: replaced whole
    assert sorted(p.name for p in target.iterdir()) == [OWNED, "c.parquet"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "plant, message",
    [
        (lambda t: (t / "manifest.json").write_text(""), f"no {OWNED}"),  # issue 31, case 1: any manifest.json
        (lambda t: (t / OWNED).write_text(""), "unreadable"),
        (lambda t: (t / OWNED).write_text('{"scencode_output": "esm-embed", "files": {}}'), "not 'tokenize'"),
        (lambda t: (t / OWNED).write_text("[1, 2]"), "unreadable"),
    ],
)
def test_a_folder_without_a_valid_record_of_this_kind_is_refused_and_kept(tmp_path, plant, message):
    target = tmp_path / "v"
    (target / "sub").mkdir(parents=True)
    (target / "thesis.tex").write_text("precious")
    plant(target)
    before = snapshot(target)
    with pytest.raises(ScencodeError, match=message):
        write_output(target)
    assert snapshot(target) == before and leftovers(tmp_path) == []


def test_a_file_a_user_copied_into_an_earlier_output_keeps_it_from_being_replaced(tmp_path):
    """Issue 31, case 1: an earlier corpus folder into which a user copied a file."""
    target = tmp_path / "corpus"
    write_output(target)
    (target / "notes.txt").write_text("mine")
    (target / "sub").mkdir()
    with pytest.raises(ScencodeError, match=r"2 entries scencode tokenize did not write \(notes.txt, sub\)"):
        write_output(target)
    assert (target / "notes.txt").read_text() == "mine" and (target / "sub").is_dir()


def test_a_symlinked_output_folder_is_followed_not_replaced(tmp_path):
    """Issue 31, case 4: the link stays, the output goes where it points."""
    real = tmp_path / "scratch" / "corpus"
    real.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    write_output(link)
    write_output(link)  # and again: the link's target is scencode's own output now
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "part-00000.parquet").read_text() == "new"


def test_a_symlinked_output_file_is_followed(tmp_path):
    real = tmp_path / "elsewhere.csv"
    real.write_text("old")
    link = tmp_path / "out.csv"
    link.symlink_to(real)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


@pytest.mark.parametrize("path", ["-x", "-x/out.csv", "--out"])
def test_a_path_that_reads_as_an_option_is_refused(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScencodeError, match="may not begin with '-'"):
        check_writable(path)
    with pytest.raises(ScencodeError, match="may not begin with '-'"):
        write_output(Path(path))
    assert list(tmp_path.iterdir()) == []


def test_esm_embed_keeps_a_users_folder_that_looks_like_its_pieces(tmp_path):
    """Issue 31, case 2: ``<out>.parts`` holding a user's folder, or a file named as the stamp."""
    from scencode.esm.embed import claim_parts

    parts = tmp_path / "emb.parquet.parts"
    (parts / "mine").mkdir(parents=True)
    (parts / "mine" / "data.txt").write_text("precious")
    with pytest.raises(ScencodeError, match="entries esm-embed did not write \\(mine\\)"):
        claim_parts(parts, {"model": "m"})
    (parts / "mine" / "data.txt").unlink()
    (parts / "mine").rmdir()
    (parts / "produced_by.json").write_text("my notes")
    with pytest.raises(ScencodeError, match="produced_by.json not written by esm-embed"):
        claim_parts(parts, {"model": "m"})
    assert (parts / "produced_by.json").read_text() == "my notes"


# the property: random mixes of user files, records and links given to every folder-replacing step


def _random_folder(rng: random.Random, folder: Path, outside: Path, kind: str) -> set[str]:
    """A folder holding some of: user files and sub-folders, a record (valid, empty, of another kind,
    listing fewer files), links to files and folders outside it. Returns the files a valid record
    lists (those are scencode's: as if it had written them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(rng.randint(0, 3)):
        name = rng.choice(
            [f"user{i}.txt", "manifest.json", "part-00000.parquet", f"sub{i}/deep.txt", "produced_by.json"]
        )
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"user data {i}")
    record = rng.choice(["none", "valid", "empty", "other-kind", "fewer"])
    owned = ownership(folder, kind)
    if record == "fewer" and owned["files"]:
        owned["files"].pop(next(iter(owned["files"])))
    if record == "other-kind":
        owned["scencode_output"] = "figures"
    if record != "none":
        (folder / OWNED).write_text("" if record == "empty" else json.dumps(owned))
    if rng.random() < 0.4:
        (outside / "theirs.txt").write_text("outside")
        (folder / "link.txt").symlink_to(outside / "theirs.txt")
    if rng.random() < 0.3:
        (folder / "linkdir").symlink_to(outside)
    return {str(folder / name) for name in owned["files"]} if record == "valid" else set()


def _user_entries(root: Path, owned: set[str]) -> dict[str, str]:
    """Every file and link under ``root`` that scencode did not write."""
    return {
        str(root / k): v
        for k, v in snapshot(root).items()
        if v != "/" and not k.endswith(OWNED) and str(root / k) not in owned
    }


@pytest.mark.parametrize("seed", range(12))
def test_no_user_file_is_ever_deleted_or_moved_by_a_folder_replacing_step(seed, tmp_path, demo_corpus):
    """tokenize (atomic_dir) and esm-embed's ``.parts`` folder, given random folders as outputs:
    each either refuses, naming the folder, or writes; every user file is where it was, unchanged."""
    from scencode.esm.embed import claim_parts

    rng = random.Random(seed)
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    corpus, parts = work / "corpus", work / "emb.parquet.parts"
    owned = _random_folder(rng, corpus, outside, "tokenize") | _random_folder(rng, parts, outside, "esm-embed")
    if rng.random() < 0.3:  # the output itself a link to a folder of user files
        (outside / "target").mkdir()
        (outside / "target" / "kept.txt").write_text("user kept")
        os.rename(corpus, work / "moved")
        corpus.symlink_to(outside / "target")
        owned = {str(Path(p).parent.parent / "moved" / Path(p).name) for p in owned}
    before = _user_entries(tmp_path, owned)
    qc = demo_corpus[0].parent / "sim_lung_1.h5ad"
    try:
        tokenize_corpus("c", [DatasetInput("a", qc)], demo_corpus[1], corpus, TokenizeParams())
    except ScencodeError as exc:
        assert "corpus" in str(exc) or "target" in str(exc)
    try:
        claim_parts(parts, {"model": "m"})
    except ScencodeError as exc:
        assert str(parts) in str(exc)
    after = _user_entries(tmp_path, owned)
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}
    assert leftovers(tmp_path) == []
