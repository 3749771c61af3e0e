rule gene_table:
    output:
        genes=f"{RESOURCES}/genes/genes.parquet",
        symbols=f"{RESOURCES}/genes/symbols.parquet",
    params:
        sources=[
            arg
            for key, value in config["gene_table"].items()
            if value
            for arg in (f"--{key.replace('_', '-')}", str(value))
        ],
    log:
        f"{LOGS}/gene_table.log",
    benchmark:
        f"{LOGS}/benchmarks/gene_table.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/data.yaml"
    shell:
        "scencode gene-table {params.sources:q} --out \"$(dirname {output.genes:q})\" > {log:q} 2>&1"


rule download:
    output:
        f"{RESOURCES}/raw/{{dataset}}.h5ad",
    params:
        source=lambda w: as_json(dataset_source(w.dataset)),
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/download/{{dataset}}.tsv"
    threads: lambda w: sized("download", w.dataset)["threads"]
    resources:
        gpu=lambda w: sized("download", w.dataset)["gpu"],
        mem_mb=lambda w: sized("download", w.dataset)["mem_mb"],
        runtime=lambda w: sized("download", w.dataset)["runtime"],
    retries: 2
    conda:
        "../../envs/data.yaml"
    shell:
        "scencode download --source {params.source:q} --out {output:q} > {log:q} 2>&1"
