# What the gene encodings learned: every trained run's gene embeddings, and reference tables (raw
# ESM-2, permuted, random), probed on HGNC gene families, protein length and chromosome, and on the
# field's gene tasks (evaluate.gene_tasks: Geneformer's labels, downloaded from commit-pinned URLs)
# with AUROC beside published anchors.


rule gene_task:
    output:
        gene_task_file("{task}"),
    log:
        f"{LOGS}/gene_task/{{task}}.log",
    wildcard_constraints:
        task="[a-z0-9_]+",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        sha256=lambda w: ["--sha256", GENE_TASKS[w.task]] if GENE_TASKS.get(w.task) else [],
    shell:
        "scencode gene-task --name {wildcards.task:q} {params.sha256:q} --out {output:q} > {log:q} 2>&1"


rule gene_probes:
    input:
        models=[model_status(run) for run in CONFIGURATIONS],
        vocab=rules.vocab.output[0],
        esm_table=ESM_TABLE,
        tasks=[gene_task_file(t) for t in GENE_TASKS],
    output:
        table=report(f"{RESULTS}/tables/gene_probes.csv", caption="../report/gene_probes.rst", category="Tables"),
        figure=report(f"{RESULTS}/figures/gene_probes.png", caption="../report/gene_probes.rst", category="Figures"),
        pdf=f"{RESULTS}/figures/gene_probes.pdf",  # written beside the PNG
    log:
        f"{LOGS}/gene_probes.log",
    benchmark:
        f"{LOGS}/benchmarks/gene_probes.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        runs=as_json([{**run_identity(run), "run": run, "model": model_status(run)} for run in CONFIGURATIONS]),
        settings=as_json(EVALUATE.get("gene_probes", {})),
        caveat=comparison_caveat(),  # the demo's figure says it is the demo's
        tasks=as_json({t: gene_task_file(t) for t in GENE_TASKS}),
    shell:
        "scencode gene-probes --runs {params.runs:q} --vocab {input.vocab:q} --esm-table {input.esm_table:q}"
        " --params {params.settings:q} --out {output.table:q} --figure {output.figure:q}"
        " --caveat {params.caveat:q} --tasks {params.tasks:q} > {log:q} 2>&1"
