# Embeddings of every model (and baseline) on every evaluation dataset, their metrics, and the
# study's tables. Baselines (pca, random) go through exactly the same evaluate rule.


ruleorder: baseline > embed


rule embed:
    input:
        model=f"{RESULTS}/models/{{config}}/model.json",
        corpus=f"{RESULTS}/tokens/{{dataset}}",
    output:
        parquet=f"{RESULTS}/embeddings/{{config}}/{{dataset}}.parquet",
        h5ad=f"{RESULTS}/embeddings/{{config}}/{{dataset}}.h5ad",
        reconstruction=f"{RESULTS}/embeddings/{{config}}/{{dataset}}.reconstruction.json",
    params:
        loader=lambda w: as_json(embed_loader(w.config)),
    log:
        f"{LOGS}/embed/{{config}}/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/embed/{{config}}/{{dataset}}.tsv"
    threads: lambda w: sized("embed", w.dataset)["threads"]
    resources:
        gpu=lambda w: sized("embed", w.dataset)["gpu"],
        mem_mb=lambda w: sized("embed", w.dataset)["mem_mb"],
        runtime=lambda w: sized("embed", w.dataset)["runtime"],
    conda:
        "../../envs/train.yaml"
    shell:
        "scencode embed --model {input.model:q} --corpus {input.corpus:q} --configuration {wildcards.config:q}"
        " --dataset {wildcards.dataset:q} --loader {params.loader:q} --threads {threads}"
        " --out {output.parquet:q} --h5ad {output.h5ad:q} --reconstruction {output.reconstruction:q} > {log:q} 2>&1"


rule baseline:
    input:
        qc=f"{RESULTS}/qc/{{dataset}}.h5ad",
    output:
        parquet=f"{RESULTS}/embeddings/baseline-{{kind}}-s{{seed}}/{{dataset}}.parquet",
        reconstruction=f"{RESULTS}/embeddings/baseline-{{kind}}-s{{seed}}/{{dataset}}.reconstruction.json",
    params:
        options=lambda w: (
            ["--label-key", DATASETS[w.dataset]["label_key"]]
            + (["--batch-key", DATASETS[w.dataset]["batch_key"]] if DATASETS[w.dataset].get("batch_key") else [])
            + (["--scvi-epochs", EVALUATE["scvi_epochs"]] if w.kind == "scvi" and EVALUATE.get("scvi_epochs") else [])
        ),
    log:
        f"{LOGS}/baseline/{{kind}}-s{{seed}}/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/baseline/{{kind}}-s{{seed}}/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "scencode baseline --kind {wildcards.kind:q} --qc {input.qc:q} --dataset {wildcards.dataset:q} {params.options:q}"
        " --seed {wildcards.seed:q} --out {output.parquet:q} --reconstruction {output.reconstruction:q} > {log:q} 2>&1"


rule evaluate:
    input:
        embedding=f"{RESULTS}/embeddings/{{config}}/{{dataset}}.parquet",
        reconstruction=f"{RESULTS}/embeddings/{{config}}/{{dataset}}.reconstruction.json",
    output:
        f"{RESULTS}/metrics/{{config}}/{{dataset}}.parquet",
    params:
        settings=as_json(EVALUATE_SETTINGS),
    log:
        f"{LOGS}/evaluate/{{config}}/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate/{{config}}/{{dataset}}.tsv"
    threads: lambda w: sized("evaluate", w.dataset)["threads"]
    resources:
        gpu=lambda w: sized("evaluate", w.dataset)["gpu"],
        mem_mb=lambda w: sized("evaluate", w.dataset)["mem_mb"],
        runtime=lambda w: sized("evaluate", w.dataset)["runtime"],
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "scencode evaluate --embedding {input.embedding:q} --reconstruction {input.reconstruction:q}"
        " --configuration {wildcards.config:q} --dataset {wildcards.dataset:q} --params {params.settings:q}"
        " --out {output:q} > {log:q} 2>&1"


rule scib_benchmarker:
    input:
        embeddings=embeddings_of,
        pre_integrated=f"{RESULTS}/embeddings/{PCA_REFERENCE}/{{dataset}}.parquet",
    output:
        f"{RESULTS}/metrics/scib_benchmarker/{{dataset}}.parquet",
    params:
        settings=as_json(SCIB_BENCHMARKER_SETTINGS),
    log:
        f"{LOGS}/scib_benchmarker/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/scib_benchmarker/{{dataset}}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "scencode scib-benchmark --embeddings {input.embeddings:q} --pre-integrated {input.pre_integrated:q}"
        " --dataset {wildcards.dataset:q} --params {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule reconstruction:
    input:
        model=f"{RESULTS}/models/{{config}}/model.json",
        train_log=f"{RESULTS}/models/{{config}}/train_log.parquet",
        corpus=corpus_dir(TRAIN_CORPUS),
    output:
        f"{RESULTS}/metrics/{{config}}/reconstruction.parquet",
    params:
        loader=lambda w: as_json(pretrain_settings(w.config)["loader"]),
    log:
        f"{LOGS}/reconstruction/{{config}}.log",
    benchmark:
        f"{LOGS}/benchmarks/reconstruction/{{config}}.tsv"
    threads: lambda w: sized("reconstruction", w.config)["threads"]
    resources:
        gpu=lambda w: sized("reconstruction", w.config)["gpu"],
        mem_mb=lambda w: sized("reconstruction", w.config)["mem_mb"],
        runtime=lambda w: sized("reconstruction", w.config)["runtime"],
    conda:
        "../../envs/train.yaml"
    shell:
        "scencode reconstruction --model {input.model:q} --train-log {input.train_log:q} --corpus {input.corpus:q}"
        " --configuration {wildcards.config:q} --loader {params.loader:q} --out {output:q} > {log:q} 2>&1"


rule tables:
    input:
        metric_tables(),
    output:
        metrics=f"{RESULTS}/tables/metrics.csv",
        summary=report(f"{RESULTS}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        tests=report(f"{RESULTS}/tables/tests.csv", caption="../report/tests.rst", category="Tables"),
    params:
        reference=REFERENCE_EXPRESSION,
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{LOGS}/benchmarks/tables.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "scencode aggregate --metrics {input:q} --reference-expression {params.reference:q}"
        " --out-dir \"$(dirname {output.metrics:q})\" > {log:q} 2>&1"
