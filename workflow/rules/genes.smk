# The gene table (GENCODE ids, HGNC symbols and their history) that QC maps gene names with.


rule gene_table:
    output:
        genes=f"{RESOURCES}/genes/genes.parquet",
        symbols=f"{RESOURCES}/genes/symbols.parquet",
    log:
        f"{LOGS}/gene_table.log",
    benchmark:
        f"{LOGS}/benchmarks/gene_table.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        sources=[
            arg
            for key, value in config["gene_table"].items()
            if value
            for arg in (f"--{key.replace('_', '-')}", str(value))
        ],
    shell:
        'scencode gene-table {params.sources:q} --out "$(dirname -- {output.genes:q})" > {log:q} 2>&1'
