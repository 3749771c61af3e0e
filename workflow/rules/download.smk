# Raw counts of every dataset (CELLxGENE Census, a URL, a local file or the embedded demo).


rule download:
    output:
        raw_h5ad(),
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/download/{{dataset}}.tsv"
    retries: 2
    conda:
        "../../envs/data.yaml"
    threads: sized_threads("download", "dataset")
    resources:
        **sized("download", "dataset"),
    params:
        source=lambda w: as_json(dataset_source(w.dataset)),
    shell:
        "scencode download --source {params.source:q} --out {output:q} > {log:q} 2>&1"
