# ESM-2 gene embeddings: proteins → (tiny demo model | released model | local weights) → gene table,
# or a published table imported as is; then its coverage of the datasets' genes.


rule proteins:
    output:
        f"{RESOURCES}/proteins/{ESM['name']}.pep.fa.gz",
    log:
        f"{LOGS}/esm/proteins.log",
    benchmark:
        f"{LOGS}/benchmarks/esm/proteins.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/esm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        source=as_json(ESM.get("proteins", {})),
    shell:
        "scencode proteins --source {params.source:q} --out {output:q} > {log:q} 2>&1"


rule esm_tiny_model:
    output:
        f"{RESOURCES}/esm/{ESM['name']}.pt",
    log:
        f"{LOGS}/esm/tiny_model.log",
    benchmark:
        f"{LOGS}/benchmarks/esm/tiny_model.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/esm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        layers=ESM["model"].get("layers", 2),
        dim=ESM["model"].get("dim", 32),
        heads=ESM["model"].get("heads", 2),
        seed=config["seed"],
    shell:
        "scencode esm-tiny --out {output:q} --layers {params.layers:q} --dim {params.dim:q}"
        " --heads {params.heads:q} --seed {params.seed:q} > {log:q} 2>&1"


if ESM["model"]["type"] == "import":

    rule esm_embeddings:
        input:
            table=ESM["model"]["path"],
            genes=rules.gene_table.output.genes,
        output:
            ESM_TABLE,
        log:
            f"{LOGS}/esm/embeddings.log",
        benchmark:
            f"{LOGS}/benchmarks/esm/embeddings.tsv"
        priority: CRITICAL_PATH
        conda:
            "../../envs/esm.yaml"
        threads: 1
        resources:
            mem_mb=8000,
        params:
            fmt=ESM["model"]["format"],
            dim=["--expected-dim", ESM["expected_dim"]] if ESM.get("expected_dim") else [],
        shell:
            "scencode esm-import --format {params.fmt:q} --input {input.table:q} {params.dim:q}"
            ' --gene-table "$(dirname -- {input.genes:q})" --out {output:q} > {log:q} 2>&1'

else:

    rule esm_embeddings:
        input:
            fasta=[rules.proteins.output[0], *species_proteins()],
            weights=esm_weights_input(),
        output:
            ESM_TABLE,
        log:
            f"{LOGS}/esm/embeddings.log",
        benchmark:
            f"{LOGS}/benchmarks/esm/embeddings.tsv"
        priority: CRITICAL_PATH
        conda:
            "../../envs/esm.yaml"
        threads: sized_threads("esm_embeddings")
        resources:
            **sized("esm_embeddings"),
        params:
            model=esm_model_arg,
            settings=as_json(ESM.get("embed", {})),
        shell:
            "scencode esm-embed --fasta {input.fasta:q} {params.model:q} --threads {threads}"
            " --params {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule esm_coverage:
    input:
        table=ESM_TABLE,
        qc=[qc_h5ad(d) for d in TRAIN_DATASETS],
        genes=rules.gene_table.output.genes,
    output:
        f"{RESULTS}/esm/{ESM['name']}/coverage.json",
    log:
        f"{LOGS}/esm/coverage.log",
    benchmark:
        f"{LOGS}/benchmarks/esm/coverage.tsv"
    conda:
        "../../envs/esm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dim=["--expected-dim", ESM["expected_dim"]] if ESM.get("expected_dim") else [],
    shell:
        "scencode esm-coverage --table {input.table:q} --qc {input.qc:q} {params.dim:q}"
        ' --gene-table "$(dirname -- {input.genes:q})" --out {output:q} > {log:q} 2>&1'
