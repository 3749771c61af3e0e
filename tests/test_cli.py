import argparse
import subprocess
import sys

import pytest
from helpers import tiny_adata

from scencode.cli import STEPS


def scencode(*args):
    return subprocess.run([sys.executable, "-m", "scencode", *args], capture_output=True, text=True)


def test_bad_input_exits_non_zero_with_the_file_and_problem(tmp_path):
    missing = tmp_path / "nope.h5ad"
    result = scencode(
        "qc",
        "--raw",
        str(missing),
        "--out",
        str(tmp_path / "o.h5ad"),
        "--report",
        str(tmp_path / "o.json"),
        "--gene-table",
        str(tmp_path),
        "--dataset",
        "d",
    )
    assert result.returncode == 1
    assert "gene table file genes.parquet is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_setting_is_named(tmp_path, gene_table_dir):
    src = tmp_path / "d.h5ad"
    tiny_adata().write_h5ad(src)
    result = scencode(
        "qc",
        "--raw",
        str(src),
        "--out",
        str(tmp_path / "o.h5ad"),
        "--report",
        str(tmp_path / "o.json"),
        "--gene-table",
        str(gene_table_dir),
        "--dataset",
        "d",
        "--params",
        '{"min_gene": 3}',
    )
    assert result.returncode == 1 and "unknown QCParams setting(s): min_gene" in result.stderr
    assert not (tmp_path / "o.h5ad").exists()


def test_check_shards_reports_a_missing_manifest(tmp_path):
    result = scencode("check-shards", "--corpus", str(tmp_path))
    assert result.returncode == 1 and "manifest.json: corpus manifest not found" in result.stderr


@pytest.mark.parametrize("step", list(STEPS))
def test_every_step_has_help(step):
    """A step's help says what it does (its function's docstring) and lists its flags (its signature)."""
    import inspect

    from scencode.cli import build_parser, step_function

    parser, _ = build_parser(step)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = subparsers.choices[step].format_help()
    doc = inspect.getdoc(step_function(step))
    assert doc and doc.splitlines()[0] in text
    required = [a for a in subparsers.choices[step]._actions if a.required]
    assert all(a.option_strings[0] in text for a in required) and (required or step in ("gene-table", "plan"))


def test_help_lists_every_step():
    result = scencode("--help")
    assert result.returncode == 0 and all(step in result.stdout for step in STEPS)
    result = scencode("qc", "--help")
    assert result.returncode == 0 and "--raw" in result.stdout and "QCParams settings as JSON" in result.stdout


def test_every_flag_the_rules_and_scripts_pass_is_a_flag_of_its_step():
    """A renamed flag breaks the rules and scripts that pass the old one (benchmarks/gpu_identity.sh
    once passed --gene-table to `scencode pretrain`, whose flag is --gene-embeddings)."""
    import re

    from helpers import REPO

    from scencode.cli import STEPS, step_flags

    files = [
        *(REPO / "workflow" / "rules").glob("*.smk"),
        *(REPO / "benchmarks").glob("*.sh"),
        *REPO.glob("scripts/*.sh"),
    ]
    checked = 0
    for path in files:
        # a command runs from `scencode <step>` to the output redirection or the end of its string
        text = re.sub(r'"\s*\n\s*"', "", path.read_text())  # the rules' implicitly joined shell strings
        arrays = dict(re.findall(r"(\w+)=\(([^)]*)\)", text))  # bash arrays spliced into a command
        text = re.sub(r'"?\$\{(\w+)\[@\]\}"?', lambda m, arrays=arrays: arrays.get(m.group(1), ""), text)
        commands = re.findall(r"scencode ([a-z][a-z-]+)((?:[^>\n;|]|\\\n)*)", text)
        # and the commands the rules build as lists (`<step>_argv`: a job's command or a batch's step)
        commands += [
            (name.replace("_", "-"), body)
            for name, body in re.findall(r"def (\w+)_argv\(.*?\n((?:    .*\n|\n)+)", text)
            if name.replace("_", "-") in STEPS
        ]
        for step, rest in commands:
            if step not in STEPS:
                continue
            known = step_flags(step)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                assert flag in known, f"{path.name}: scencode {step} has no flag {flag}"
                checked += 1
    assert checked > 50


def test_a_parameter_typed_as_any_sequence_takes_several_values():
    """`Sequence[Path]` (what the type checker asks of a tuple default) parses as `list[Path]` does."""
    from pathlib import Path

    from scencode.cli import build_parser

    parser, _ = build_parser("tables")
    args = parser.parse_args(["tables", "--metrics", "m.parquet", "--out-dir", "t", "--qc-reports", "a.json", "b.json"])
    assert args.qc_reports == [Path("a.json"), Path("b.json")]
    parser, _ = build_parser("figures")
    args = parser.parse_args(["figures", "--summary", "s", "--metrics", "m", "--out-dir", "f", "--models", "x", "y"])
    assert args.models == [Path("x"), Path("y")]


def test_a_batch_runs_each_step_in_turn_with_its_own_log(tmp_path):
    import json

    jobs = [
        {"argv": ["gene-table", "--out", str(tmp_path / "genes")], "log": str(tmp_path / "one.log")},
        {"argv": ["check-shards", "--corpus", str(tmp_path / "none")], "log": str(tmp_path / "two.log")},
        {"argv": ["gene-table", "--out", str(tmp_path / "again")], "log": str(tmp_path / "three.log")},
    ]
    result = scencode("batch", "--jobs", json.dumps(jobs))
    assert (tmp_path / "genes" / "genes.parquet").exists()
    assert "corpus manifest not found" in (tmp_path / "two.log").read_text()  # the step's error, in its log
    assert "corpus manifest not found" not in (tmp_path / "one.log").read_text()
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(f"step 2 of 3 (check-shards) failed; its log: {tmp_path / 'two.log'}")
    )
    assert not (tmp_path / "three.log").exists() and not (tmp_path / "again").exists()  # stops at the failure


@pytest.mark.parametrize(
    "jobs, problem",
    [
        ('[{"argv": ["batch", "--jobs", "[]"], "log": "x.log"}]', "'batch' is not a step a batch can run"),
        ('[{"argv": ["gene-table"]}]', 'batch job 1: expected {"argv": [step, flags…], "log": path}'),
        ('[{"argv": ["no-such-step"], "log": "x.log"}]', "'no-such-step' is not a step"),
    ],
)
def test_a_malformed_batch_is_refused_before_any_step_runs(tmp_path, jobs, problem):
    result = subprocess.run(
        [sys.executable, "-m", "scencode", "batch", "--jobs", jobs], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1 and problem in result.stderr and not (tmp_path / "x.log").exists()
