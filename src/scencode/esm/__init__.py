"""The ESM-2 stage (rules/esm.smk): protein sequences per gene (``proteins``), ESM-2 embeddings of
them with fair-esm (``embed``), and imported or checked gene-embedding tables (``gene_tables``)."""
