# Baseline embeddings (pca, random; scvi with scvi-tools) of every evaluation dataset, from the QC'd
# counts: they go through exactly the same evaluate rule as the models.


rule baseline:
    input:
        qc=qc_h5ad(),
    output:
        f"{RESULTS}/baselines/baseline-{{kind}}-s{{seed}}/{{dataset}}.parquet",
    log:
        f"{LOGS}/baseline/{{kind}}-s{{seed}}/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/baseline/{{kind}}-s{{seed}}/{{dataset}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        options=lambda w: (
            ["--label-key", DATASETS[w.dataset]["label_key"]]
            + (["--batch-key", DATASETS[w.dataset]["batch_key"]] if DATASETS[w.dataset].get("batch_key") else [])
            + (["--scvi-epochs", EVALUATE["scvi_epochs"]] if w.kind == "scvi" and EVALUATE.get("scvi_epochs") else [])
        ),
    shell:
        "scencode baseline --kind {wildcards.kind:q} --qc {input.qc:q} --dataset {wildcards.dataset:q} {params.options:q}"
        " --seed {wildcards.seed:q} --out {output:q} > {log:q} 2>&1"
