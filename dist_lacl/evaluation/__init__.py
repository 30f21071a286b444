"""Evaluation: read the field's formats, encode on every rank, search with FAISS, score runs.

Modules, one job each: `inputs` (corpus, queries, qrels readers with validation), `encode` (sharded,
length-sorted encoding), `index` (FAISS indexes on CPU or GPUs, block-wise exact search), `metrics`
(MRR, Recall, nDCG as trec_eval computes them), `report` (TREC run file, JSON report, table),
`evaluate` (the pipelines the CLI and the trainer call), `cli` (the encode/search/evaluate commands).
"""
