"""The config and its dataset sheets, checked once for the workflow and `scencode plan`."""

from __future__ import annotations

import pytest
import yaml
from helpers import REPO

from scencode.errors import ScencodeError
from scencode.workflow_config import QC_PREFIX, load, read_datasets, read_yaml, sheet_schema

HEADER = "dataset\trole\tsource\tsource_id\tsha256\tlabel_key\tn_cells\ttissue\tqc_min_genes\n"


def sheet(tmp_path, *rows, header=HEADER, name="datasets.tsv"):
    path = tmp_path / name
    path.write_text("# a comment line\n" + header + "".join(row + "\n" for row in rows))
    return path


def test_rows_become_the_workflows_dataset_settings(tmp_path):
    url = "https://example.org/a.h5ad\t" + "a" * 64
    path = sheet(
        tmp_path,
        "lung\ttrain\tdemo\tsim_lung_1\t\t\t300\tlung\t",
        "web\teval\turl\t" + url + "\tcell_type\t\tblood\t50",
        "cxg\ttrain\tcensus\t7d98cc44-b090\t\t\t2489\t\t",
    )
    datasets = read_datasets({"datasets": str(path)})
    assert datasets["lung"] == {
        "role": "train",
        "n_cells": 300,
        "tissue": "lung",
        "source": {"type": "demo", "name": "sim_lung_1", "n_cells": 300},
    }
    assert datasets["web"] == {
        "role": "eval",
        "label_key": "cell_type",
        "tissue": "blood",
        "qc": {"min_genes": 50},
        "source": {"type": "url", "url": "https://example.org/a.h5ad", "sha256": "a" * 64},
    }
    assert datasets["cxg"]["source"] == {"type": "census", "dataset_id": "7d98cc44-b090"}


def test_a_census_query_is_a_json_cell(tmp_path):
    path = sheet(
        tmp_path,
        'ts_eye\teval\tcensus\t{"dataset_title": "Eye"}\tcell_type',
        header="dataset\trole\tsource\tcensus_query\tlabel_key\n",
    )
    assert read_datasets({"datasets": str(path)})["ts_eye"]["source"] == {
        "type": "census",
        "query": {"dataset_title": "Eye"},
    }


@pytest.mark.parametrize(
    "row, message",
    [
        (
            "a\ttraining\tdemo\tx\t\t\t\t\t",
            "row 2 (dataset a), column role: 'training' is not one of ['train', 'eval']",
        ),
        ("a\ttrain\tdemo\tx\t\t\tmany\t\t", "row 2, column n_cells: 'many' is not an integer"),
        ("a\ttrain\tdemo\tx\t\t\t0\t\t", "row 2 (dataset a), column n_cells: 0 is less than the minimum of 1"),
        ("a\teval\tdemo\tx\t\t\t\t\t", "row 2 (dataset a): 'label_key' is a required property"),
        ("a\ttrain\turl\thttps://x.org/a.h5ad\t\t\t\t\t", "row 2 (dataset a): 'sha256' is a required property"),
        ("a\ttrain\tdemo\tx\t\t\t\t\t-5", "row 2 (dataset a), column qc_min_genes: -5 is less than the minimum of 0"),
        ("a b\ttrain\tdemo\tx\t\t\t\t\t", "row 2 (dataset a b), column dataset: 'a b' does not match"),
        ("sim\ttrain\tdemo\tx\t\t\t\t\t", "row 2, column dataset: 'sim' is listed twice (first in"),
    ],
)
def test_a_bad_row_names_the_sheet_the_row_and_the_column(tmp_path, row, message):
    path = sheet(tmp_path, "sim\ttrain\tdemo\tsim_lung_1\t\t\t\t\t", row)
    with pytest.raises(ScencodeError) as error:
        read_datasets({"datasets": str(path)})
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_dataset_in_two_sheets_is_refused(tmp_path):
    first = sheet(tmp_path, "sim\ttrain\tdemo\tsim_lung_1\t\t\t\t\t", name="a.tsv")
    second = sheet(tmp_path, "sim\teval\tdemo\tsim_lung_1\t\tcell_type\t\t\t", name="b.tsv")
    with pytest.raises(
        ScencodeError, match=f"{second}: row 1, column dataset: 'sim' is listed twice \\(first in {first}, row 1\\)"
    ):
        read_datasets({"datasets": [str(first), str(second)]})


def test_an_unknown_column_is_named_with_the_known_ones(tmp_path):
    path = sheet(tmp_path, "sim\ttrain\tdemo\tx\t1", header="dataset\trole\tsource\tsource_id\tcells\n")
    with pytest.raises(ScencodeError, match="unknown column\\(s\\) 'cells' \\(known: dataset, role"):
        read_datasets({"datasets": str(path)})


def test_qc_columns_take_their_rules_from_the_config_schema():
    """A bound lives in one place: the sheet's qc_<key> columns are the config's qc settings."""
    config_qc = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["$defs"]["qc"]
    columns = sheet_schema()["properties"]
    for key, rule in config_qc["properties"].items():
        column = columns[QC_PREFIX + key]
        assert {k: v for k, v in column.items() if k != "type"} == {k: v for k, v in rule.items() if k != "type"}


def test_a_key_written_twice_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 0\nqc:\n  min_genes: 5\n  min_counts: 3\n  min_genes: 7\n")
    with pytest.raises(
        ScencodeError, match=f"{path}: key 'min_genes' is written twice in one mapping \\(lines 3 and 5\\)"
    ):
        read_yaml(path)


@pytest.mark.parametrize("name", ["config/config.yaml", "config/paper.yaml", ".test/config/config.yaml"])
def test_the_shipped_configs_and_sheets_are_valid(name):
    config = load(REPO / name)
    assert {spec["role"] for spec in config["datasets"].values()} == {"train", "eval"}


def test_sheets_are_found_from_the_repository_when_not_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "pbmc68k" in read_datasets({"datasets": "config/datasets/demo.tsv"})
    with pytest.raises(ScencodeError, match="nowhere.tsv: dataset sheet not found"):
        read_datasets({"datasets": "nowhere.tsv"})


def test_the_benchmarker_runs_only_on_evaluation_datasets(tmp_path):
    config = yaml.safe_load((REPO / ".test/config/config.yaml").read_text())
    config["datasets"] = str(REPO / ".test/config/datasets.tsv")
    config["evaluate"]["scib_benchmarker"]["datasets"] = ["sim_lung_eval", "sim_lung_1", "nowhere"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(
        ScencodeError,
        match="evaluate.scib_benchmarker.datasets names 'sim_lung_1', 'nowhere', not an evaluation dataset; "
        "the evaluation datasets: pbmc68k, sim_lung_eval, sim_pancreas_eval",
    ):
        load(path)


@pytest.mark.parametrize(
    ("row", "species", "message"),
    [
        (
            "mouse\ttrain\tdemo\tsim_lung_1\t\t\tmus_musculus",
            {"mus_musculus": {"type": "simulated"}},
            "models train on",
        ),
        ("mouse\teval\tdemo\tsim_lung_1\tcell_type\t\tmus_musculus", None, "which config 'species' does not describe"),
        ("mouse\teval\tdemo\tsim_lung_1\tcell_type\t\tMus musculus", None, "column organism"),
    ],
)
def test_another_organism_is_an_evaluation_dataset_of_a_described_species(tmp_path, row, species, message):
    config = yaml.safe_load((REPO / ".test/config/config.yaml").read_text())
    header = "dataset\trole\tsource\tsource_id\tlabel_key\tbatch_key\torganism\n"
    config["datasets"] = [str(REPO / ".test/config/datasets.tsv"), str(sheet(tmp_path, row, header=header))]
    config["species"] = species
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ScencodeError, match=message):
        load(path)
    config["species"] = {"mus_musculus": {"type": "files", "proteins": {"type": "url", "url": "https://x.org/p.fa"}}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ScencodeError, match="does not match its schema"):  # a url unpinned, orthologs missing
        load(path)
