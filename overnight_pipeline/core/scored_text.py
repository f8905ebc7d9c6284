"""`SCORES_COMPUTED` of format 3 (`core.scored`) for a whole scored batch at once, assembled
from fragments of text made once per distinct value instead of a list and an `orjson.dumps`
per user.

A user's document is `{"format":3,"scores":[` then per holding `["<score>",[` its breakdown
rows `]]` (comma-separated), then `]}`. Its pieces are few distinct texts: a breakdown row
(criterion id, matched, points, skipped reason) is one of a few hundred combinations in a
batch, each serialised once by orjson (so its bytes are orjson's: the document's are those
`orjson.dumps` writes of the dict, compared in `overnight_pipeline_tests/core/test_scored.py`),
and a holding's opening is one per distinct score text. Every piece gets its place in one
array of the batch's tokens (numpy arithmetic on the row and holding numbers), and each
user's document is one `str.join` of its run of tokens.

It takes the columns as the batch path makes them (matched bool, points integer, criterion
ids and skipped reasons strings or None); anything else returns None and `score_json` makes
the documents user by user.

Against the user-by-user path (a list per holding, an `orjson.dumps` per user), on
`bench/batch_cpu_bench.py`'s 9,717 users alternated with it: `score_json` 39.6–43.0 →
16.6–17.6 µs a user in the bench (37.0–37.7 → 17.3–17.9 timed alone), the same documents
(digest unchanged). What is left is mostly the columns' factorizing (criterion ids and
skipped reasons over ≈ 70 rows a user, the holdings' user ids and top contributors) and
the scores' texts made by identity (an `id` per holding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd

_FIRST = '{"format":3,"scores":[["'  # a user's first holding
_NEXT = ']],["'  # any other holding: the previous one closed
_OPENED = '",['  # after the score: the breakdown rows
_CLOSE = "]]]}"  # the last holding, its user's list and document closed


def _all(values: Any, kinds: tuple[type, ...]) -> bool:
    return all(type(v) in kinds for v in values)


def _row_texts(b: pd.DataFrame) -> tuple[np.ndarray, list[str]] | None:
    """A code per breakdown row and the JSON text of each code's row, made once per
    distinct (criterion id, matched, points, skipped reason); None for columns of other
    types than the batch path makes."""
    matched = b["matched"].to_numpy()
    points = b["points_awarded"].to_numpy()
    if matched.dtype != np.bool_ or points.dtype.kind not in "iu":
        return None
    cid_codes, cids = pd.factorize(b["criterion_id"].to_numpy(dtype=object))
    if (cid_codes < 0).any() or not _all(cids, (str,)):
        return None
    skip_codes, skips = pd.factorize(b["skipped_reason"].to_numpy(dtype=object))
    if not _all(skips, (str,)):
        return None
    skip_list = [*skips.tolist(), None]  # code -1: None (or NaN, which orjson writes as null)
    point_codes, point_values = pd.factorize(points)
    n_points, n_skips = len(point_values), len(skip_list)
    keys = ((cid_codes * 2 + matched) * n_points + point_codes) * n_skips + (skip_codes % n_skips)
    codes, distinct = pd.factorize(keys)
    rest, skip_at = np.divmod(distinct, n_skips)
    rest, point_at = np.divmod(rest, n_points)
    cid_at, matched_at = np.divmod(rest, 2)
    cid_list, point_list = cids.tolist(), point_values.tolist()
    texts = [
        orjson.dumps((cid_list[c], bool(m), point_list[p], skip_list[s])).decode()
        for c, m, p, s in zip(
            cid_at.tolist(), matched_at.tolist(), point_at.tolist(), skip_at.tolist(), strict=True
        )
    ]
    return codes, texts


def format_3_texts(
    b: pd.DataFrame,
    score_codes: np.ndarray,
    score_texts: list[str],
    users: list[Any],
    spans: list[int],
) -> dict[Any, str] | None:
    """user → format 3 document of the holdings scored in `b` (the breakdown, grouped by
    holding in order), holding i's score `score_texts[score_codes[i]]`, user k's holdings
    `spans[k]` to `spans[k + 1]` (together, in order); None for columns of other types."""
    n = len(score_codes)
    if not n:
        return {}
    rows = _row_texts(b)
    if rows is None:
        return None
    row_codes, texts = rows
    holding = b["holding"].to_numpy().astype(np.int64, copy=False)
    m, k = len(holding), len(texts)
    # A holding's first row has no comma before it.
    later = np.zeros(m, dtype=bool)
    later[1:] = holding[1:] == holding[:-1]
    row_table = np.array([*texts, *("," + t for t in texts)], dtype=object)
    d = len(score_texts)
    open_table = np.array(
        [*(_FIRST + t + _OPENED for t in score_texts), *(_NEXT + t + _OPENED for t in score_texts)],
        dtype=object,
    )
    span = np.asarray(spans, dtype=np.int64)
    n_users = len(users)
    first_holding = np.zeros(n, dtype=np.int64)
    first_holding[span[:-1]] = 1
    user_of = np.cumsum(first_holding) - 1
    bounds = np.searchsorted(holding, np.arange(n + 1))  # rows before each holding
    # Token positions: a user's holdings, each followed by its rows, then the user's close;
    # what comes before a token is counted from the row and holding numbers.
    at_holding = np.arange(n) + bounds[:-1] + user_of
    at_row = np.arange(m) + holding + 1 + user_of[holding]
    at_close = span[1:] + bounds[span[1:]] + np.arange(n_users)
    tokens = np.empty(n + m + n_users, dtype=object)
    tokens[at_holding] = open_table[np.asarray(score_codes) + d * (1 - first_holding)]
    tokens[at_row] = row_table[row_codes + k * later]
    tokens[at_close] = _CLOSE
    listed = tokens.tolist()
    starts = at_holding[span[:-1]].tolist()
    ends = (at_close + 1).tolist()
    documents = map("".join, map(listed.__getitem__, map(slice, starts, ends)))
    return dict(zip(users, documents, strict=True))
