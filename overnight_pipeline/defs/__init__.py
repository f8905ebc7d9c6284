"""Dagster definitions, loaded by `overnight_pipeline.definitions` with
`load_from_defs_folder`: every module here holds module-level objects named for what they
are — `assets` (the overnight assets), `jobs`, `schedules`, `sensors` (run bookkeeping),
`readiness` (the per-market checks and their sensor), `recalculation` (the same-day job and
its sensor), `retention` (the daily job and its schedule) — and the helpers they share
(`partitions`, `resources`, `retries`, `executors`, `loggers`, `checks`). Thin over `steps`
and `storage`."""
