# Cell embeddings of every trained model on every evaluation corpus (mean of final-layer token
# outputs), with the context diagnostic (masked, no-context and gene-mean MSE) on the same cells.


rule embed:
    input:
        model=model_status(),
        corpus=embedded_corpus,
    output:
        parquet=f"{RESULTS}/embeddings/{{run}}/{{dataset}}.parquet",
        h5ad=f"{RESULTS}/embeddings/{{run}}/{{dataset}}.h5ad",
        reconstruction=f"{RESULTS}/embeddings/{{run}}/{{dataset}}.reconstruction.json",
    log:
        f"{LOGS}/embed/{{run}}/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/embed/{{run}}/{{dataset}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: sized_threads("embed", "dataset")
    resources:
        **sized("embed", "dataset"),
    params:
        loader=lambda w: as_json(embed_loader(w.run)),
        split=lambda w: ["--split", "test"] if w.dataset == ID_TEST else [],
    shell:
        "scencode embed --model {input.model:q} --corpus {input.corpus:q} --run {wildcards.run:q}"
        " --dataset {wildcards.dataset:q} {params.split:q} --params {params.loader:q} --threads {threads}"
        " --out {output.parquet:q} --h5ad {output.h5ad:q} --reconstruction {output.reconstruction:q} > {log:q} 2>&1"
