"""`paradl-tf bench`: every method measured against one device and hand-written tf.distribute, in one run.

An application built on the library, with its own extra (`pip install paradl_tf[bench]`), one concern a module:

- what is measured: `workloads` (models, data and their cost), `methods` (the toolkit's strategy sections and
  their hand-written sides), `modes` (full, quick, tiny: how much; the sections' definitions);
- the parts of a run, one module each in `parts/` (main table, tutorials side by side, sections, sweeps, network,
  data), registered with their
  time budgets in `parts.PARTS`: a new part is one module there and one entry in that table;
- how: `specs` (one measurement and its config), `processes` (worker processes, interleaved, always ended),
  `budgets`, `machine` (what it is, its matmul peaks), `figures` (statistics and ratios), `results`
  (results.json), `run` (the whole run, `run_bench`);
- the measuring process (`worker`), the hand-written and tutorial-style code it runs (`reference/`, which must not
  import paradl_tf's training code), the tf.data service row (`service`), and the report (`report/`: RESULTS.md,
  the console table, the plots)."""
