# Each corpus (the training datasets together, each evaluation dataset alone) as Parquet shards of
# raw counts per cell, split by a stable hash.


rule tokenize:
    input:
        vocab=rules.vocab.output[0],
        qc=lambda w: [d["path"] for d in corpus_inputs(w.corpus)],
        leakage=tokenize_exclusions,
    output:
        directory(corpus_dir()),
    log:
        f"{LOGS}/tokenize/{{corpus}}.log",
    benchmark:
        f"{LOGS}/benchmarks/tokenize/{{corpus}}.tsv"
    priority: CRITICAL_PATH
    conda:
        "../../envs/data.yaml"
    threads: sized_threads("tokenize", "corpus")
    resources:
        **sized("tokenize", "corpus"),
    params:
        datasets=lambda w: as_json(corpus_inputs(w.corpus)),
        settings=as_json(config["tokenize"]),
        labels=lambda w: (
            ["--labels"] if w.corpus != TRAIN_CORPUS else ["--labels", "--training"] if TRAIN_LABELED else []
        ),
        exclude=lambda w, input: ["--exclude", input.leakage] if input.leakage and LEAKAGE["policy"] == "drop" else [],
    shell:
        "scencode tokenize --corpus {wildcards.corpus:q} --datasets {params.datasets:q}"
        " --vocab {input.vocab:q} --out {output:q} --params {params.settings:q} {params.labels:q} {params.exclude:q}"
        " > {log:q} 2>&1"
