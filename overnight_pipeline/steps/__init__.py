"""The overnight steps of one market-date partition, free of Dagster.

Each Dagster asset of `defs/` calls one of these and turns its report (`reports`) into
materialization metadata; the CLI, the tests and the benchmarks can call them directly:

- `market_data`: `fetch_rates`, `fetch_prices`, `fetch_fundamentals`;
- `calculation`: `score_and_recommend`, the scores, recommendations and four events of every
  user of one shard of the partition (`batch_results`: one batch of them; `progress`: the
  step's log lines; `batches`: the next batch read and the last one written beside the
  computation);
- `replay`: `replay_sample`, a sample of a calculation's users recomputed from their events;
- `cache_warming`: `warm_cache`, the calculation's recommendations written to Redis.

Users are processed in batches of `batch_size`; each batch is one transaction, and a step
that is retried or re-executed under the same correlation id skips the users whose events
are already there, so nothing is duplicated (BEHAVIOUR §4, §7).
"""
