"""Runs: the one fit skeleton (`fit`) and the strategies' hooks into it (`multi_worker`, `parameter_server`),
and `plan`, which describes a run without training."""
