# The genes held out of every training cell (pretrain.unseen_genes, a fraction; 0: off): drawn once,
# seeded and stratified by expression level, from the training corpus's gene medians table (its
# count of cells expressing each gene). Every configuration holds out the same genes.


rule unseen_genes:
    input:
        medians=GENE_MEDIANS,
        vocab=rules.vocab.output[0],
    output:
        UNSEEN_GENES,
    log:
        f"{LOGS}/unseen_genes.log",
    benchmark:
        f"{LOGS}/benchmarks/unseen_genes.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        fraction=UNSEEN_FRACTION,
        seed=config["seed"],
    shell:
        "scencode unseen-genes --gene-medians {input.medians:q} --vocab {input.vocab:q} --fraction {params.fraction}"
        " --seed {params.seed} --out {output:q} > {log:q} 2>&1"
