# Figures from the tables alone: `snakemake figures --forcerun figures` redraws them and runs
# nothing upstream. `snakemake --report results/report.html` collects them with their captions.

FIGURES = [
    "fig1_batch_vs_bio",
    "fig2_classification",
    "fig3_min_train_mse",
    "loss_curves",
    "heatmap_per_dataset",
    "paper_comparison",
    "fig4_cost_vs_bio",
    "fig5_shift",
    "fig6_scaling",
    *(["fig7_unseen_genes"] if UNSEEN_TABLE else []),
]


rule figures:
    input:
        summary=rules.tables.output.summary,
        metrics=rules.tables.output.metrics,
        train_logs=[train_log(run) for run in CONFIGURATIONS],
        models=[model_status(run) for run in CONFIGURATIONS],
        unseen_genes=UNSEEN_TABLE,
    output:
        png=[
            report(f"{RESULTS}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in FIGURES
        ],
        pdf=[f"{RESULTS}/figures/{name}.pdf" for name in FIGURES],
        comparison=f"{RESULTS}/figures/paper_comparison.csv",
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{LOGS}/benchmarks/figures.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        caveat=comparison_caveat(),
        unseen=lambda w, input: ["--unseen-genes", input.unseen_genes] if input.unseen_genes else [],
    shell:
        "scencode figures --summary {input.summary:q} --metrics {input.metrics:q}"
        ' --train-logs {input.train_logs:q} --models {input.models:q} --caveat {params.caveat:q} {params.unseen:q} --out-dir "$(dirname -- {output.comparison:q})"'
        " > {log:q} 2>&1"
