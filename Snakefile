# scencode: gene and expression encodings for single-cell foundation models, benchmarked end to end.
# Table of contents only: every stage is one file under workflow/rules/, every rule calls `scencode <step>`.
# It lives at the repository root so that `snakemake` run from here finds it and the workflow profile
# (per-rule resources) in profiles/default/: Snakemake looks for that profile only in ./profiles/default
# and beside the Snakefile.
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


# The demo config is the default; `--configfile other.yaml` replaces it rather than merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/genes.smk"
include: "workflow/rules/species.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/esm.smk"
include: "workflow/rules/leakage.smk"
include: "workflow/rules/vocab.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/corpus_stats.smk"
include: "workflow/rules/unseen_genes.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/reconstruction.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/scib_benchmark.smk"
include: "workflow/rules/gene_probes.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        all_targets(),
