# The study's metrics (scIB batch and bio, kNN classification) of every embedding, models and
# baselines alike. One job per (run, dataset), or with jobs_per_run one per run (one process).


if JOBS_PER_RUN:
    # two rules, as models and baselines are scored on different datasets (a rule's outputs are fixed)
    for _runs, _kind in ((list(CONFIGURATIONS), "models"), (list(BASELINES), "baselines")):
        if not _runs:
            continue
        _datasets = scored_datasets(_runs[0])

        rule:
            name:
                f"evaluate_{_kind}"
            input:
                lambda w: [p for d in scored_datasets(w.run) for p in evaluate_inputs(w.run, d) if p],
            output:
                [metrics_path("{run}", d) for d in _datasets],
            log:
                [f"{LOGS}/evaluate/{{run}}.batch.log", *[step_log("evaluate", "{run}", d) for d in _datasets]],
            benchmark:
                f"{LOGS}/benchmarks/evaluate/{{run}}.tsv"
            wildcard_constraints:
                run="|".join(re.escape(r) for r in _runs),
            conda:
                "../../envs/evaluate.yaml"
            threads: sized_threads("evaluate", datasets=_datasets)
            resources:
                **sized("evaluate", datasets=_datasets),
            params:
                jobs=lambda w, threads: as_json(
                    [
                        {"argv": evaluate_argv(w.run, d, threads), "log": step_log("evaluate", w.run, d)}
                        for d in scored_datasets(w.run)
                    ]
                ),
            shell:
                "scencode batch --jobs {params.jobs:q} > {log[0]:q} 2>&1"

else:

    rule evaluate:
        input:
            lambda w: [p for p in evaluate_inputs(w.run, w.dataset) if p],
        output:
            metrics_path("{run}", "{dataset}"),
        log:
            step_log("evaluate", "{run}", "{dataset}"),
        benchmark:
            f"{LOGS}/benchmarks/evaluate/{{run}}/{{dataset}}.tsv"
        conda:
            "../../envs/evaluate.yaml"
        threads: sized_threads("evaluate", "dataset")
        resources:
            **sized("evaluate", "dataset"),
        params:
            argv=lambda w, threads: evaluate_argv(w.run, w.dataset, threads),
        shell:
            "scencode {params.argv:q} > {log:q} 2>&1"
