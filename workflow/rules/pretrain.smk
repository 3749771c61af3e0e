# One pretraining job per configuration (gene encoding × expression encoding × seed), on
# pretrain.gpus GPUs × pretrain.nodes nodes (one torchrun process per GPU; same optimiser steps on
# any number). GPUs, memory and runtime are computed by scencode.plan (pretrain_resources); a site
# overrides them in the workflow profile (profiles/default). last.pt is deliberately
# not an output: Snakemake would delete it when a preempted job fails, and the retry resumes from it.
# Nor is best.pt: a run that diverges before its first validation has none, and model.json says so
# (evaluation then reports the configuration as missing, with the reason, instead of failing).


rule pretrain:
    input:
        corpus=corpus_dir(TRAIN_CORPUS),
        vocab=rules.vocab.output[0],
        gene_embeddings=pretrain_gene_embeddings,
        gene_medians=pretrain_gene_medians,
        unseen_genes=pretrain_unseen_genes,
    output:
        status=model_status(),
        log=train_log(),
    log:
        f"{LOGS}/pretrain/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/pretrain/{{run}}.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/train.yaml"
    threads: pretrain_threads
    resources:
        **pretrain_resources(),
    params:
        settings=lambda w: as_json(pretrain_settings(w.run)),
        table=lambda w, input: ["--gene-embeddings", input.gene_embeddings] if input.gene_embeddings else [],
        medians=lambda w, input: ["--gene-medians", input.gene_medians] if input.gene_medians else [],
        unseen=lambda w, input: ["--unseen-genes", input.unseen_genes] if input.unseen_genes else [],
        launch=lambda w, threads: pretrain_launch(w, threads),
    shell:
        "{params.launch[srun]}scencode pretrain --name {wildcards.run:q} --corpus {input.corpus:q}"
        " --vocab {input.vocab:q} {params.table:q} {params.medians:q} {params.unseen:q}"
        " {params.launch[flags]} --params {params.settings:q}"
        ' --out "$(dirname -- {output.status:q})" > {log:q} 2>&1'
