# The study's tables from every metric table: metrics.csv (long), summary.csv, tests.csv, rank_stability.csv.


rule tables:
    input:
        metric_tables(),
    output:
        metrics=f"{RESULTS}/tables/metrics.csv",
        summary=report(f"{RESULTS}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        tests=report(f"{RESULTS}/tables/tests.csv", caption="../report/tests.rst", category="Tables"),
        rank_stability=report(f"{RESULTS}/tables/rank_stability.csv", caption="../report/rank_stability.rst",
                              category="Tables"),
    params:
        reference=REFERENCE_EXPRESSION,
        levels=as_json(SHIFT_LEVELS),
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{LOGS}/benchmarks/tables.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "scencode tables --metrics {input:q} --reference-expression {params.reference:q} --levels {params.levels:q}"
        " --out-dir \"$(dirname -- {output.metrics:q})\" > {log:q} 2>&1"
