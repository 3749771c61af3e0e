# The study's metrics (scIB batch and bio, kNN classification) of every embedding, models and
# baselines alike.


rule evaluate:
    input:
        embedding=lambda w: embedding_path(w.run, w.dataset),
        # models only: the context diagnostic of the embed job (baselines reconstruct nothing)
        reconstruction=lambda w: (
            f"{RESULTS}/embeddings/{w.run}/{w.dataset}.reconstruction.json" if w.run in CONFIGURATIONS else []
        ),
    output:
        f"{RESULTS}/metrics/{{run}}/{{dataset}}.parquet",
    log:
        f"{LOGS}/evaluate/{{run}}/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate/{{run}}/{{dataset}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: sized_threads("evaluate", "dataset")
    resources:
        **sized("evaluate", "dataset"),
    params:
        settings=as_json(EVAL_METRICS),
        identity=identity_args,
        reconstruction=lambda w, input: ["--reconstruction", input.reconstruction] if input.reconstruction else [],
    shell:
        "scencode evaluate --embedding {input.embedding:q} {params.reconstruction:q}"
        " {params.identity:q} --dataset {wildcards.dataset:q} --params {params.settings:q}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"
