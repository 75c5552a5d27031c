"""The studio's benchmark (``manage.py studio_bench``, see BENCHMARKS.md).

``suite.run_bench`` runs a preset (``presets``) section by section: overhead
against raw diffusers (``overhead``, ``raw_diffusers``, ``studio_sandbox``,
``studio_driver``), the registry's economics (``registry_economics``), cost
growth (``growth``), queue throughput (``throughput``) and GPU iterations per
second (``gpu``); ``targets`` checks the results and ``report`` renders them.
"""
