"""A big load file is read a piece at a time (issue 23): checked whole, then written a
chunk of users at a time in one transaction, with the errors, rows and change records of
the whole-file path."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, select

from overnight_pipeline.cli import data as cli_data
from overnight_pipeline.cli import main
from overnight_pipeline.core import load_stream
from overnight_pipeline.core.load_errors import LoadFileError
from overnight_pipeline.core.load_fields import AssetIn
from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.load_json import decode_load_file
from overnight_pipeline.core.load_stream import LoadStream
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.storage import loader
from overnight_pipeline.storage.db import migrate
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.loader import load_stream as load_chunks
from overnight_pipeline.storage.models import (
    asset_classes_table,
    assets_table,
    criteria_rules_table,
    criteria_versions_table,
    holdings_table,
    user_changes_table,
    users_table,
)
from overnight_pipeline_tests.storage.test_load import (
    _FIELDS,
    _QUANTITY_TWICE,
    USER,
    _bad_files,
    _edit,
    _hostile,
    _text,
    dump,
    sample,
)
from overnight_pipeline_tests.support import load_files
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
    redis_namespace,
)

MARKETS = load_markets()
USERS = 120  # several chunks of CHUNK, the last one short
CHUNK = 25
PIECES = (1, 7, 4096)  # bytes read at a time: every token split somewhere, and whole


def _whole(data: bytes) -> Any:
    """What the whole-file functions make of `data`: every error as printed, or the
    assets and users."""
    try:
        doc = parse_load_file(decode_load_file(data), markets=MARKETS)
    except LoadFileError as exc:
        return [str(e) for e in exc.errors]
    return [*doc.assets, *doc.users]


def _streamed(data: bytes, piece: int) -> Any:
    """The same from `LoadStream`: its check's errors, or the items of its second pass
    (in the file's order: assets first here)."""
    source = LoadStream(Path("file.json"), data=data, piece=piece)
    try:
        source.check(markets=MARKETS)
    except LoadFileError as exc:
        return [str(e) for e in exc.errors]
    items = list(source.items())
    return [i for i in items if isinstance(i, AssetIn)] + [
        i for i in items if not isinstance(i, AssetIn)
    ]


def _repeated_ids() -> bytes:
    """Ids given twice and thrice, among users with other errors and invalid ones."""
    user = sample()["users"][0]
    wrong = json.loads(json.dumps(user))
    wrong["holdings"][0]["assetClass"] = "Nope"
    other = "6f1c0000-0000-4000-8000-000000000002"
    users = [
        wrong,
        {**user, "id": other},
        {"id": "not an id"},
        user,
        {**wrong, "id": other},
        user,
        {**user, "id": USER.upper()},
    ]
    return json.dumps({"assets": sample()["assets"], "users": users}).encode()


def _corpus() -> dict[str, bytes]:
    text = _text()
    cases = {
        "sample": text.encode(),
        "compact": json.dumps(sample(), separators=(",", ":")).encode(),
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "utf16": json.dumps(sample()).encode("utf-16"),
        "utf16le": json.dumps(sample()).encode("utf-16-le"),
        "not utf8 late": text.encode().replace(b"Coca-Cola", b"Coca\xffCola"),
        "not utf8 after a syntax error": b'{"users": [{"a" 1}], "assets": "\xff"}',
        "truncated utf8": text.encode()[:-1] + b"\xc3",
        "empty": b"",
        "blank": b" \n\t\x0b\x0c ",
        "vertical tab": b"\x0b{}",
        "two boms": "\ufeff\ufeff{}".encode(),
        "not json": b"{not json",
        "unclosed": b'{"users": [], "assets": [}',
        "trailing comma": b'{"users": [], "assets": [1,]}',
        "missing comma": b'{"users": [{"a": 1} {"b": 2}]}',
        "missing colon": b'{"users" []}',
        "cut short": text.encode()[:-40],
        "extra data": text.encode() + b"\n x",
        "lines": b'{"users":[],\n"assets":[\n1,\n\n]}',
        "too deep": b"[" * 100_000 + b"]" * 100_000,
        "too deep inside": b'{"assets": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "deep but readable": b'{"assets": ' + b"[" * 1000 + b"]" * 1000 + b', "users": []}',
        "a list": b"[1, 2, 3, 4, 5, 6]",
        "a string": b'"users"',
        "a number": b"12",
        "repeated ids": _repeated_ids(),
        "users not a list": b'{"users": {"a": 1}, "assets": null}',
        "unknown fields": b'{"people": [1, 2], "users": [], "extra": "x"}',
        "repeated lists": b'{"x": [1], "users": [], "x": [{"a": 1, "a": 2}]}',
        "repeated users, then quantity": _edit(
            _edit(text, *_QUANTITY_TWICE), "\n}", ', "users": []}'
        ).encode(),
        "users first": json.dumps({"users": sample()["users"], "assets": sample()["assets"]})
        .replace("KO", "K\\u004f")
        .encode(),
        "surrogates": _edit(text, '"name": "Coca-Cola"', '"Coca\\udc00": "\\ud83d\\ude00\\ud800"')
        .replace('"quantity": "10"', '"quantity": NaN')
        .encode(),
        "numbers": _edit(text, '"points": 10', '"points": ' + "9" * 5001)
        .replace('"maxAssets": 5', '"maxAssets": -1E+999')
        .encode(),
    }
    for kind, (data, _) in _bad_files().items():
        cases[f"bad {kind}"] = data
    return cases


CORPUS = _corpus()


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("case", list(CORPUS))
def test_the_stream_finds_what_the_whole_file_reading_finds(case: str, piece: int) -> None:
    """Every error `decode_load_file` + `parse_load_file` list (same text, same order), or
    the same assets and users, however the file is cut into pieces."""
    expected = _whole(CORPUS[case])
    assert _streamed(CORPUS[case], piece) == expected
    if case == "sample":
        assert len(expected) == 3  # two assets, one user: the comparison compares something


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _hostile), max_size=3),
    indent=st.sampled_from([None, 1, "\t"]),
    ascii_only=st.booleans(),
    piece=st.integers(min_value=1, max_value=64),
)
def test_any_document_reads_the_same_streamed_in_any_pieces(
    changes: list[tuple[tuple[Any, ...], Any]], indent: Any, ascii_only: bool, piece: int
) -> None:
    doc: Any = sample()
    for where, value in changes:
        target = doc
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
    data = json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert _streamed(data, piece) == _whole(data)


def _state(conn: Connection, ids: list[uuid.UUID]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows a load of users `ids` wrote, without generated ids and times."""
    u, c, h, a = users_table, asset_classes_table, holdings_table, assets_table
    v, r, ch = criteria_versions_table, criteria_rules_table, user_changes_table
    queries = {
        "assets": select(a.c.market, a.c.symbol, a.c.currency, a.c.name),
        "users": select(u.c.id, u.c.base_currency, u.c.default_contribution, u.c.active).where(
            u.c.id.in_(ids)
        ),
        "classes": select(
            c.c.user_id,
            c.c.name,
            c.c.position,
            c.c.target_min,
            c.c.target_max,
            c.c.max_assets,
            c.c.min_allocation_value,
        ).where(c.c.user_id.in_(ids)),
        "holdings": select(h.c.user_id, a.c.market, a.c.symbol, c.c.name, h.c.quantity)
        .join(a, a.c.id == h.c.asset_id)
        .join(c, c.c.id == h.c.asset_class_id)
        .where(h.c.user_id.in_(ids)),
        "criteria": select(
            v.c.user_id,
            v.c.version,
            r.c.position,
            r.c.rule_id,
            r.c.asset_class,
            r.c.metric,
            r.c.operator,
            r.c.value,
            r.c.value2,
            r.c.points,
        )
        .join(r, r.c.criteria_version_id == v.c.id)
        .where(v.c.user_id.in_(ids)),
        "changes": select(ch.c.user_id, ch.c.what).where(ch.c.user_id.in_(ids)),
        "change times": select(ch.c.changed_at).where(ch.c.user_id.in_(ids)).distinct(),
    }
    state = {
        name: sorted((tuple(row) for row in conn.execute(query)), key=repr)
        for name, query in queries.items()
    }
    state["change times"] = [(len(state["change times"]),)]  # one time per load
    return state


def test_a_file_of_several_chunks_loads_the_rows_and_changes_of_the_whole_file(
    db_conn: Connection, tmp_path: Path
) -> None:
    """A first file, then a second changing about half its users (its assets after them),
    loaded CHUNK users at a time and whole (the path before issue 23), from the same state:
    the same rows, criteria versions and user_changes."""
    files = [
        load_files.write(
            tmp_path / f"v{version}.json",
            USERS,
            seed=23,
            version=version,
            users_first=bool(version),
        )
        for version in (0, 1)
    ]
    ids = [uuid.UUID(u["id"]) for u in load_files.users(USERS, seed=23)]
    whole: list[Any] = []
    with db_conn.begin_nested() as savepoint:
        for path in files:
            load(db_conn, parse_load_file(json.loads(path.read_bytes()), markets=MARKETS))
            whole.append(_state(db_conn, ids))
        savepoint.rollback()
    assert whole[0] != whole[1] and _state(db_conn, ids)["users"] == []
    written: list[int] = []
    for path, expected in zip(files, whole, strict=True):
        source = LoadStream(path)
        source.check(markets=MARKETS)
        report = load_chunks(db_conn, source, chunk=CHUNK, progress=written.append)
        assert _state(db_conn, ids) == expected
    assert written == [*range(CHUNK, USERS, CHUNK), USERS] * 2
    changed = len(expected["changes"]) - USERS  # the rows after "created"
    assert (report.users, report.assets, report.users_changed) == (USERS, 1800, changed)
    assert 0.3 * USERS < changed < 0.7 * USERS


def test_the_second_pass_holds_one_chunk_of_users_at_most(
    pg_conn: Connection, tmp_path: Path
) -> None:
    """Each user is written before more than CHUNK further users are read: what is held
    does not grow with the file."""
    source = LoadStream(load_files.write(tmp_path / "users.json", USERS, seed=5))
    source.check(markets=MARKETS)
    read, written, gaps = [0], [0], []
    items = source.items

    def counted(**kwargs: bool) -> Iterator[Any]:
        for item in items(**kwargs):
            if isinstance(item, loader.UserIn):
                read[0] += 1
                gaps.append(read[0] - written[0])
            yield item

    source.items = counted  # type: ignore[method-assign]
    load_chunks(pg_conn, source, chunk=CHUNK, progress=lambda n: written.__setitem__(0, n))
    assert read[0] == written[0] == USERS
    assert max(gaps) == CHUNK


@pytest.fixture(scope="module")
def cli_db() -> Iterator[str]:
    url = create_pg_database("overnight_load_stream")
    migrate(url)
    yield url
    drop_pg_database(url)


@pytest.fixture
def marker_prefix() -> Iterator[str]:
    """`overnight load` marks the users it changed in Redis (`storage.freshness`): under a
    prefix of this test's own, emptied afterwards."""
    yield from redis_namespace("test:load")


@pytest.fixture
def overnight(cli_db: str, marker_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from overnight_pipeline.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", cli_db)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("CACHE_PREFIX", marker_prefix)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_overnight_load_says_how_far_it_is_on_stderr(
    overnight: None,
    cli_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_data, "LOAD_PROGRESS_USERS", 50)
    monkeypatch.setattr(load_stream, "PROGRESS_EVERY", 25)
    monkeypatch.setattr(loader, "CHUNK", CHUNK)
    path = load_files.write(tmp_path / "users.json", USERS, seed=7)
    assert main(["load", str(path)]) == 0
    out, err = capsys.readouterr()
    lines = [line.removeprefix(f"{path}: ") for line in err.splitlines()]
    size = path.stat().st_size / 1e6
    assert [line.split(" (")[0] for line in lines[:3]] == [
        "checked 50 users",
        "checked 100 users",
        "checked 120 users",
    ]
    assert lines[2].startswith(f"checked 120 users ({size:.1f} of {size:.1f} MB) in ")
    assert [line.split(" in ")[0] for line in lines[3:]] == [
        "wrote 50 of 120 users",
        "wrote 100 of 120 users",
        "wrote 120 of 120 users",
    ]
    assert all(line.endswith(" s") for line in lines)
    assert f"1800 assets, {USERS} users" in out and f"{USERS} user(s) changed" in out
    assert len(dump(cli_db)["users"]) == USERS


def _last_user(edit: str) -> dict[str, Any]:
    doc = {"assets": load_files.assets(), "users": list(load_files.users(USERS, seed=8))}
    holding = doc["users"][-1]["holdings"][0]
    if edit == "quantity":
        holding["quantity"] = "-3"
    else:
        holding["symbol"] = "NOPE"
    return doc


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "quantity",
            f"  $.users[{USERS - 1}].holdings[0].quantity: Input should be greater than 0 (got -3)",
        ),
        (
            "asset",
            f"  $.users[{USERS - 1}].holdings[0]: asset is neither in $.assets nor in the"
            " database (got '",
        ),
    ],
)
def test_overnight_load_refuses_a_file_whose_last_user_is_wrong_writing_nothing(
    overnight: None,
    cli_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: str,
    message: str,
) -> None:
    """Found by the first pass (a value) or before the first write (an asset nowhere): the
    users before it, several chunks of them, are not written either."""
    path = tmp_path / "users.json"
    path.write_text(json.dumps(_last_user(edit)))
    before = dump(cli_db)
    assert main(["load", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 error(s); nothing was written" in err and message in err, err
    assert "wrote" not in err
    assert dump(cli_db) == before


def test_overnight_load_refuses_a_file_changed_after_its_check_writing_nothing(
    overnight: None,
    cli_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second pass reads what the first checked, or the transaction is rolled back:
    here the file is rewritten (valid, other users) once checked."""
    monkeypatch.setattr(cli_data, "LOAD_PROGRESS_USERS", 50)
    monkeypatch.setattr(loader, "CHUNK", CHUNK)
    path = load_files.write(tmp_path / "users.json", USERS, seed=9)
    check = LoadStream.check

    def then_rewritten(self: LoadStream, **kwargs: Any) -> None:
        check(self, **kwargs)
        load_files.write(path, USERS, seed=10)

    monkeypatch.setattr(LoadStream, "check", then_rewritten)
    before = dump(cli_db)
    assert main(["load", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"$: {path} changed while it was loaded" in err and "nothing was written" in err
    assert f"wrote 100 of {USERS} users" in err  # then the end: different bytes
    assert dump(cli_db) == before
