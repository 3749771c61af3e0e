# The gene vocabulary every configuration shares (by default the genes with a protein embedding),
# with the genes of another organism's evaluation datasets appended (scencode.species).


rule vocab:
    input:
        qc=[qc_h5ad(d) for d in TRAIN_DATASETS],
        protein_genes=vocab_protein_genes(),
        species_qc=[qc_h5ad(d) for datasets in SPECIES_DATASETS.values() for d in datasets],
        orthologs=[f"{species_dir(organism)}/orthologs.parquet" for organism in SPECIES_DATASETS],
    output:
        f"{RESULTS}/vocab.parquet",
    log:
        f"{LOGS}/vocab.log",
    benchmark:
        f"{LOGS}/benchmarks/vocab.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        policy=config["vocab"]["policy"],
        protein=lambda w, input: ["--protein-genes", input.protein_genes] if input.protein_genes else [],
        species=lambda w, input: ["--species", vocab_species(w, input)] if SPECIES_DATASETS else [],
    shell:
        "scencode vocab --qc {input.qc:q} --policy {params.policy:q} {params.protein:q} {params.species:q}"
        " --out {output:q} > {log:q} 2>&1"
