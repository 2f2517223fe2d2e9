"""pytest-benchmark suites for fusedkat (``pytest bench --benchmark-json out.json``) and their report.

Suites: ``bench_rational`` (paper Figs. 6-7), ``bench_activation`` (paper Table 7), ``bench_grkan_layer``
(paper Table 2), ``bench_model_step`` (KAT vs ViT training step).  ``FUSEDKAT_BENCH_SIZE=small|paper``
picks the sizes; ``python -m bench.report out.json`` renders tables and plots.
"""
