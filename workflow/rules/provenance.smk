# What produced the results (scencode's commit, library versions, the config's hash with its
# dataset sheets, the Census release, the hardware), rewritten when the config or sheets change.


rule provenance:
    input:
        sheets=[str(p) for p in workflow_config.sheet_paths(config)],
    output:
        report(f"{RESULTS}/provenance.json", caption="../report/provenance.rst", category="Provenance"),
    log:
        f"{LOGS}/provenance.log",
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    params:
        config=as_json(config),
    shell:
        "scencode provenance --config {params.config:q} --sheets {input.sheets:q} --out {output:q} > {log:q} 2>&1"
