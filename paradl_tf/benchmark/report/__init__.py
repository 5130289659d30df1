"""The benchmark's report, from the results dict alone (results.json), one module per table group.

`markdown` writes RESULTS.md in order (`write_all`: with the plots), taking its tables from `main` (the main
table), `sections`, `sweeps` and `data` (one module per part of the run), with the figures formatted by `format`;
`console` is the table a run prints; `plots` draws the PNGs (matplotlib, Agg). A report can be redrawn from a
saved run:

    python -m paradl_tf.benchmark.report bench/results.json
"""
