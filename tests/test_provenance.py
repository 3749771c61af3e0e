"""results/provenance.json: what produced a run."""

from __future__ import annotations

import subprocess

from helpers import REPO

from scencode.provenance import config_hash, run


def test_provenance_names_the_commit_the_versions_and_the_hardware(tmp_path):
    sheet = tmp_path / "d.tsv"
    sheet.write_text("dataset\trole\n")
    record = run({"seed": 0, "census_version": "2025-01-30"}, [sheet], tmp_path / "provenance.json")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert record["scencode"]["commit"] == head and isinstance(record["scencode"]["dirty"], bool)
    assert record["versions"]["torch"] and record["versions"]["polars"] and record["versions"]["snakemake"]
    assert record["census_version"] == "2025-01-30" and record["hardware"]["cpus"] >= 1
    assert (tmp_path / "provenance.json").read_text().count(head) == 1


def test_the_config_hash_follows_settings_and_sheet_contents(tmp_path):
    sheet = tmp_path / "d.tsv"
    sheet.write_text("dataset\trole\na\ttrain\n")
    first = config_hash({"seed": 0}, [sheet])
    assert config_hash({"seed": 0}, [sheet]) == first and config_hash({"seed": 1}, [sheet]) != first
    sheet.write_text("dataset\trole\na\teval\n")
    assert config_hash({"seed": 0}, [sheet]) != first
