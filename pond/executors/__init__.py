"""Executors: where the step functions run. `local` (the runner itself, polars in process) or
`ray` (pond.executors.ray_exec: the same step functions on Ray Data). Steps never know which."""
