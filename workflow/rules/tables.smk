# The study's tables from every metric table: metrics.csv (long), summary.csv, tests.csv, rank_stability.csv,
# and shift_levels.csv (each scored dataset's shift level, from the tissues QC found in the data);
# with pretrain.unseen_genes, unseen_genes.csv (the genes held out of training: left out vs in the input).
UNSEEN_TABLE = [f"{RESULTS}/tables/unseen_genes.csv"] if ID_TEST_UNSEEN in SCORED else []
# with evaluation datasets of another organism (scencode.species), species.csv (species vs near)
SPECIES_TABLE = [f"{RESULTS}/tables/species.csv"] if SPECIES_DATASETS else []


rule tables:
    input:
        metrics=metric_tables(),
        qc_reports=expand(f"{RESULTS}/qc/{{dataset}}.json", dataset=sorted(DATASETS)),
    output:
        metrics=f"{RESULTS}/tables/metrics.csv",
        shift_levels=f"{RESULTS}/tables/shift_levels.csv",
        summary=report(f"{RESULTS}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        tests=report(f"{RESULTS}/tables/tests.csv", caption="../report/tests.rst", category="Tables"),
        rank_stability=report(
            f"{RESULTS}/tables/rank_stability.csv", caption="../report/rank_stability.rst", category="Tables"
        ),
        unseen_genes=[report(p, caption="../report/unseen_genes.rst", category="Tables") for p in UNSEEN_TABLE],
        species=[report(p, caption="../report/species.rst", category="Tables") for p in SPECIES_TABLE],
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{LOGS}/benchmarks/tables.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        reference=REFERENCE_EXPRESSION,
        shift=as_json(SHIFT),
    shell:
        "scencode tables --metrics {input.metrics:q} --reference-expression {params.reference:q}"
        " --shift {params.shift:q} --qc-reports {input.qc_reports:q}"
        ' --out-dir "$(dirname -- {output.metrics:q})" > {log:q} 2>&1'
