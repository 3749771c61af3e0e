# One pretraining job per configuration (gene encoding × expression encoding × seed). GPUs, memory
# and runtime come from the workflow profile (profiles/default). last.pt is deliberately
# not an output: Snakemake would delete it when a preempted job fails, and the retry resumes from it.
# Nor is best.pt: a run that diverges before its first validation has none, and model.json says so
# (evaluation then reports the configuration as missing, with the reason, instead of failing).


rule pretrain:
    input:
        corpus=corpus_dir(TRAIN_CORPUS),
        vocab=rules.vocab.output[0],
        gene_embeddings=pretrain_gene_embeddings,
    output:
        status=model_status(),
        log=train_log(),
    log:
        f"{LOGS}/pretrain/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/pretrain/{{run}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: sized_threads("pretrain", "run")
    resources:
        **sized("pretrain", "run"),
    params:
        settings=lambda w: as_json(pretrain_settings(w.run)),
        table=lambda w, input: ["--gene-embeddings", input.gene_embeddings] if input.gene_embeddings else [],
    shell:
        "scencode pretrain --name {wildcards.run:q} --corpus {input.corpus:q} --vocab {input.vocab:q}"
        " {params.table:q} --threads {threads} --params {params.settings:q}"
        ' --out "$(dirname -- {output.status:q})" > {log:q} 2>&1'
