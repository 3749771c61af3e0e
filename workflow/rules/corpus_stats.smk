# What the token corpora hold (cells, genes per cell, tokens after the context cap, vocabulary
# coverage), as a table and a figure; `scencode plan` prices training from the table.


rule corpus_stats:
    input:
        corpora=[corpus_dir(c) for c in CORPORA],
        vocab=rules.vocab.output[0],
    output:
        table=report(f"{RESULTS}/tables/corpus_stats.csv", caption="../report/corpus_stats.rst", category="Tables"),
        figure=report(f"{RESULTS}/figures/corpus_stats.png", caption="../report/corpus_stats.rst", category="Figures"),
        pdf=f"{RESULTS}/figures/corpus_stats.pdf",  # written beside the PNG
    log:
        f"{LOGS}/corpus_stats.log",
    benchmark:
        f"{LOGS}/benchmarks/corpus_stats.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    # two shards' gene ids in memory, whatever the corpus's size: 3,650 MB at the paper's 100,000
    # cells a shard (rehearsal, 1M training cells), 0.91 of the 4,000 asked before
    resources:
        mem_mb=8000,
    params:
        context=PRETRAIN["loader"]["context"],
        caveat=comparison_caveat(),  # the demo's figure says it is the demo's
    shell:
        "scencode corpus-stats --corpora {input.corpora:q} --vocab {input.vocab:q} --context {params.context}"
        " --out {output.table:q} --figure {output.figure:q} --caveat {params.caveat:q} > {log:q} 2>&1"


# Per-gene non-zero medians of the training split (Geneformer's normalisation): read by the
# expression encodings that order a cell's genes (rank); planned only where one is configured.
rule gene_medians:
    input:
        corpus=corpus_dir(TRAIN_CORPUS),
        vocab=rules.vocab.output[0],
    output:
        GENE_MEDIANS,
    log:
        f"{LOGS}/gene_medians.log",
    benchmark:
        f"{LOGS}/benchmarks/gene_medians.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        **sized("gene_medians"),
    shell:
        "scencode gene-medians --corpus {input.corpus:q} --vocab {input.vocab:q} --out {output:q} > {log:q} 2>&1"
