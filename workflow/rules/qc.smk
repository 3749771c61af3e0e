rule qc:
    input:
        raw=raw_h5ad(),
        genes=lambda w: gene_table_of(w.dataset),
    output:
        h5ad=qc_h5ad(),
        report=f"{RESULTS}/qc/{{dataset}}.json",
    log:
        f"{LOGS}/qc/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/qc/{{dataset}}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: sized_threads("qc", "dataset")
    resources:
        **sized("qc", "dataset"),
    params:
        settings=lambda w: as_json(qc_settings(w.dataset)),
    shell:
        "scencode qc --raw {input.raw:q} --out {output.h5ad:q} --report {output.report:q}"
        ' --gene-table "$(dirname -- {input.genes:q})" --dataset {wildcards.dataset:q}'
        " --params {params.settings:q} > {log:q} 2>&1"
