# The leakage audit (scencode leakage ↔ src/scencode/leakage.py): every training dataset against every
# evaluation dataset (dataset and collection ids, donors, barcodes). Policy `leakage.policy`: report
# (default), drop (the training corpus leaves the overlapping cells out) or error (stop here).


rule leakage:
    input:
        qc=[qc_h5ad(d) for d in [*TRAIN_DATASETS, *EVAL_DATASETS]],
        raw=[raw_h5ad(d) for d in [*TRAIN_DATASETS, *EVAL_DATASETS]],
    output:
        audit=f"{RESULTS}/leakage.json",
        table=report(f"{RESULTS}/tables/leakage.csv", caption="../report/leakage.rst", category="Tables"),
    log:
        f"{LOGS}/leakage.log",
    benchmark:
        f"{LOGS}/benchmarks/leakage.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        datasets=as_json(leakage_inputs()),
        policy=LEAKAGE["policy"],
    shell:
        "scencode leakage --datasets {params.datasets:q} --policy {params.policy:q}"
        " --out {output.audit:q} --table {output.table:q} > {log:q} 2>&1"
