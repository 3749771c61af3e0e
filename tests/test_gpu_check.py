"""The GPU check's reduced CPU mode, run as a bare CUDA node would run it: without anndata, h5py,
scanpy, scipy, scikit-learn or Snakemake importable (only torch, numpy, pyarrow, pandas, and the
pure-Python fair-esm and tqdm)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("anndata", "h5py", "scanpy", "scipy", "sklearn", "snakemake", "scib_metrics", "scvi")


def bare_node_path(folder: Path) -> Path:
    """Packages that shadow the workflow stack and fail on import, as missing ones do."""
    for name in BLOCKED:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError('No module named {name} (a bare GPU node)', name={name!r})\n"
        )
    return folder


def test_gpu_check_runs_every_part_without_the_workflow_stack(tmp_path):
    blocked = bare_node_path(tmp_path / "bare")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT / "src")])}
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--smoke",
            "--skip",
            "compile",
            "--pretrain-steps",
            "12",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert not [k for k in result if k.endswith("_error")], result
    step = result["train_step"]
    assert step["padded_real_tokens_per_s"] > 0 and step["bucketed_real_tokens_per_s"] > 0
    assert step["packed_real_tokens_per_s"] > 0
    assert (
        step["packed_real_token_fraction"]
        == 1.0
        > step["bucketed_real_token_fraction"]
        > step["padded_real_token_fraction"]
    )
    assert result["paper_estimate"]["gpu_hours"] > 0 and "assumed" in result["paper_estimate"]["assumption"]
    assert result["bf16_vs_fp32"]["relative_difference"] == 0.0  # no autocast on the CPU
    same = result["packed_vs_padded"]
    assert same["fp32_loss_relative_difference"] < 1e-5 and same["fp32_grad_relative_difference"] < 1e-4
    pretrain = result["pretrain"]
    assert pretrain["steps"] == 12 and pretrain["resumed"] and pretrain["steps_after_resume"] == 14
    assert pretrain["checkpoint_step"] in (3, 6, 9, 12)
    torchrun = result["torchrun"]  # the rule's torchrun path: stopped by SIGTERM, resumed where it stopped
    assert torchrun["stopped_exit"] != 0 and torchrun["checkpointed_on_stop"] and torchrun["resumed"]
    assert torchrun["resume_exit"] == 0 and torchrun["steps_after_resume"] == torchrun["stopped_at"] + 5
    embed = result["embed"]
    assert embed["cells"] == 300 and {"masked_mse", "masked_mse_no_context", "gene_mean_mse"} <= set(embed)
    assert result["esm2"]["genes"] == 20 and result["esm2"]["dim"] == 32
