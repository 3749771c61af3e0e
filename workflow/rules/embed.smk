# Cell embeddings of every trained model on every evaluation corpus (mean of final-layer token
# outputs), with the context diagnostic (masked, no-context and gene-mean MSE) on the same cells.
# One job per (run, dataset), or with jobs_per_run one per run (its datasets in one process).


if JOBS_PER_RUN:

    rule embed:
        input:
            model=model_status(),
            corpora=[embedded_corpus_of(d) for d in SCORED],
        output:
            [path for d in SCORED for path in embed_outputs("{run}", d).values()],
        log:
            [f"{LOGS}/embed/{{run}}.batch.log", *[step_log("embed", "{run}", d) for d in SCORED]],
        benchmark:
            f"{LOGS}/benchmarks/embed/{{run}}.tsv"
        conda:
            "../../envs/train.yaml"
        threads: sized_threads("embed", datasets=SCORED)
        resources:
            **sized("embed", datasets=SCORED),
        params:
            jobs=lambda w, threads: as_json(
                [{"argv": embed_argv(w.run, d, threads), "log": step_log("embed", w.run, d)} for d in SCORED]
            ),
        shell:
            "scencode batch --jobs {params.jobs:q} > {log[0]:q} 2>&1"

else:

    rule embed:
        input:
            model=model_status(),
            corpus=embedded_corpus,
        output:
            **embed_outputs("{run}", "{dataset}"),
        log:
            step_log("embed", "{run}", "{dataset}"),
        benchmark:
            f"{LOGS}/benchmarks/embed/{{run}}/{{dataset}}.tsv"
        conda:
            "../../envs/train.yaml"
        threads: sized_threads("embed", "dataset")
        resources:
            **sized("embed", "dataset"),
        params:
            argv=lambda w, threads: embed_argv(w.run, w.dataset, threads),
        shell:
            "scencode {params.argv:q} > {log:q} 2>&1"
