# Another organism's reference (scencode.species): its gene table (for QC), proteome (for ESM-2) and
# one-to-one orthologs to human (for a learned table), from config 'species'; the demo's is simulated.


rule species:
    output:
        genes=f"{species_dir()}/genes.parquet",
        symbols=f"{species_dir()}/symbols.parquet",
        orthologs=f"{species_dir()}/orthologs.parquet",
        proteins=f"{species_dir()}/proteins.pep.fa.gz",
    log:
        f"{LOGS}/species/{{organism}}.log",
    benchmark:
        f"{LOGS}/benchmarks/species/{{organism}}.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        source=lambda w: as_json(SPECIES[w.organism]),
    shell:
        "scencode species --organism {wildcards.organism:q} --source {params.source:q}"
        ' --out "$(dirname -- {output.genes:q})" > {log:q} 2>&1'
