# scib-metrics' own default set and aggregate (its Benchmarker), every embedding of a dataset in one job
# (each configuration at its largest training set, and the baselines), on evaluate.scib_benchmarker.datasets.


rule scib_benchmarker:
    input:
        embeddings=embeddings_of,
        pre_integrated=lambda w: embedding_path(PCA_REFERENCE, w.dataset),
    output:
        f"{RESULTS}/metrics/scib_benchmarker/{{dataset}}.parquet",
    log:
        f"{LOGS}/scib_benchmarker/{{dataset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/scib_benchmarker/{{dataset}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    # JAX runs on its own thread pool and n_jobs only reaches pynndescent, which scencode replaces by
    # exact kNN: on a cluster 4 CPUs feed JAX; on a CPU machine (the demo) each job takes one core,
    # so that the last datasets' Benchmarkers run side by side (each used about one core: 2.2 of the
    # demo's 14.7 min were Benchmarker jobs running one at a time with 2 threads)
    threads: 4 if USE_GPUS else 1
    resources:
        mem_mb=32000,
        runtime=1440,  # scib-metrics' JAX metrics on every embedding of a dataset; see docs/benchmarks.md
    params:
        settings=as_json(BENCHMARKER_SETTINGS),
        runs=as_json([{"run": run, **run_identity(run)} for run in BENCHMARKED_RUNS]),
    shell:
        "scencode scib-benchmark --embeddings {input.embeddings:q} --pre-integrated {input.pre_integrated:q}"
        " --runs {params.runs:q} --dataset {wildcards.dataset:q} --params {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"
