# Each trained model's reconstruction table: minimum training loss, the context diagnostic on the
# training corpus's held-out test split, how training ended and what it cost.


rule reconstruction:
    input:
        model=model_status(),
        train_log=train_log(),
        corpus=corpus_dir(TRAIN_CORPUS),
        test_errors=measured_test_errors,
    output:
        f"{RESULTS}/metrics/{{run}}/reconstruction.parquet",
    log:
        f"{LOGS}/reconstruction/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/reconstruction/{{run}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: sized_threads("reconstruction", "run")
    resources:
        **sized("reconstruction", "run"),
    params:
        loader=lambda w: as_json(pretrain_settings(w.run)["loader"]),
        identity=identity_args,
        test_errors=lambda w, input: ["--test-errors", input.test_errors] if input.test_errors else [],
    shell:
        "scencode reconstruction --model {input.model:q} --train-log {input.train_log:q} --corpus {input.corpus:q}"
        " {params.identity:q} {params.test_errors:q} --params {params.loader:q} --out {output:q} > {log:q} 2>&1"
