# Cell embeddings of every trained model on every evaluation corpus (mean of final-layer token
# outputs), with the context diagnostic; and each model's reconstruction on held-out training cells.


rule embed:
    input:
        model=model_status(),
        corpus=embedded_corpus,
    output:
        parquet=f"{RESULTS}/embeddings/{{run}}/{{dataset}}.parquet",
        h5ad=f"{RESULTS}/embeddings/{{run}}/{{dataset}}.h5ad",
        reconstruction=f"{RESULTS}/embeddings/{{run}}/{{dataset}}.reconstruction.json",
    params:
        loader=lambda w: as_json(embed_loader(w.run)),
        split=lambda w: ["--split", "test"] if w.dataset == ID_TEST else [],
    log:
        f"{LOGS}/embed/{{run}}/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/embed/{{run}}/{{dataset}}.tsv"
    threads: sized_threads("embed", "dataset")
    resources:
        **sized("embed", "dataset"),
    conda:
        "../../envs/train.yaml"
    shell:
        "scencode embed --model {input.model:q} --corpus {input.corpus:q} --run {wildcards.run:q}"
        " --dataset {wildcards.dataset:q} {params.split:q} --params {params.loader:q} --threads {threads}"
        " --out {output.parquet:q} --h5ad {output.h5ad:q} --reconstruction {output.reconstruction:q} > {log:q} 2>&1"


rule reconstruction:
    input:
        model=model_status(),
        train_log=train_log(),
        corpus=corpus_dir(TRAIN_CORPUS),
    output:
        f"{RESULTS}/metrics/{{run}}/reconstruction.parquet",
    params:
        loader=lambda w: as_json(pretrain_settings(w.run)["loader"]),
        identity=identity_args,
    log:
        f"{LOGS}/reconstruction/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/reconstruction/{{run}}.tsv"
    threads: sized_threads("reconstruction", "run")
    resources:
        **sized("reconstruction", "run"),
    conda:
        "../../envs/train.yaml"
    shell:
        "scencode reconstruction --model {input.model:q} --train-log {input.train_log:q} --corpus {input.corpus:q}"
        " {params.identity:q} --params {params.loader:q} --out {output:q} > {log:q} 2>&1"
