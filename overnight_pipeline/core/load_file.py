"""The `overnight load` file (BEHAVIOUR §10): validated whole, every error listed by JSON path.

Every value is checked against what its column holds (length, digits before and after the
point, integer range) before anything is written, so a file the validator accepts never
fails in the database. A file that says two things (a key twice in one object) or holds what
no field can (NaN, an infinite number, half a surrogate pair) is refused by JSON path too,
and so are identifiers that would display like a different one (invisible, direction-changing
or line-breaking characters, blank or padded values).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from overnight_pipeline.core.money import is_currency
from overnight_pipeline.core.scoring import Rule

# orjson's own limit; the file's real structure is five levels deep.
MAX_DEPTH = 1024
# Characters of a value shown in an error: a 1 MB string is not echoed back whole.
SHOWN = 60
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Numeric:
    """A NUMERIC(precision, scale) column: what it can hold without rounding or overflow."""

    precision: int
    scale: int


# The columns of storage.models (core cannot import storage; a storage test keeps them equal).
AMOUNT = Numeric(20, 4)
PERCENT = Numeric(7, 4)
QUANTITY = Numeric(28, 10)
RULE_VALUE = Numeric(28, 10)
TEXT_LENGTHS = {"market": 16, "symbol": 32, "asset_name": 200, "class_name": 100, "rule_id": 64}

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# PostgreSQL text cannot hold NUL; the other control characters (tab, newline and carriage
# return aside, which COPY escapes) are never meant in a name and garble logs and terminals.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Unicode's bidirectional controls (embeddings, overrides, isolates, marks): in a name they
# reorder the text around it on the page.
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def check_numeric(value: Decimal, column: Numeric) -> Decimal:
    """`value` if `column` holds it exactly; ValueError saying why not."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0")
    if not text:
        return value  # zero, however written
    places = max(0, -(exponent + len("".join(map(str, digits))) - len(text)))
    if places > column.scale:
        raise ValueError(
            f"has {places} digits after the decimal point; at most {column.scale} are kept"
        )
    if value.adjusted() >= column.precision - column.scale:
        raise ValueError(
            f"is too large: at most {column.precision - column.scale} digits before the "
            "decimal point"
        )
    return value


def _decimal(column: Numeric) -> Callable[[Any], Decimal]:
    def parse(value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            kind = "a JSON number" if isinstance(value, float) else type(value).__name__
            raise ValueError(
                f"must be a decimal string such as '3.10', not {kind}"
                + (" (binary floats cannot hold cents exactly)" if isinstance(value, float) else "")
            )
        if isinstance(value, str):
            if not _NUMBER.fullmatch(value):
                raise ValueError("must be a decimal string such as '3.10'")
            value = Decimal(value)
        return check_numeric(Decimal(value), column)

    return parse


def _printable(value: str) -> str:
    found = _UNPRINTABLE.search(value)
    if found:
        raise ValueError(
            f"contains the control character U+{ord(found.group()):04X} at position {found.start()}"
        )
    return value


def _character(char: str) -> str:
    """`U+202E RIGHT-TO-LEFT OVERRIDE`: a character named so that the message shows it."""
    return f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip()


def _identifier(value: str) -> str:
    """`value` if it reads as it displays: no format character (invisible or direction-
    changing), no line or paragraph separator, no control character but tab, newline and
    carriage return; not blank, not starting or ending with whitespace."""
    # isprintable() is False for every character refused here (and for tabs, or spaces other
    # than U+0020, which are allowed inside): the character loop only runs for those.
    if not value.isprintable():
        _printable(value)
        for position, char in enumerate(value):
            category = unicodedata.category(char)
            if category == "Cf":
                raise ValueError(
                    f"contains {_character(char)} at position {position}: an identifier cannot"
                    " hold invisible or direction-changing characters"
                )
            if category in ("Zl", "Zp"):
                raise ValueError(
                    f"contains {_character(char)} at position {position}: an identifier cannot"
                    " hold line or paragraph separators"
                )
    if value.isspace():
        raise ValueError("is blank: an identifier needs a visible character")
    for end, char in (("starts", value[:1]), ("ends", value[-1:])):
        if char.isspace():
            raise ValueError(
                f"{end} with {_character(char)}: an identifier cannot start or end with whitespace"
            )
    return value


def _identifier_text(value: Any) -> Any:
    """`_identifier` on a string, before it is parsed into something else (a UUID)."""
    return _identifier(value) if isinstance(value, str) else value


def _display_name(value: str) -> str:
    found = _BIDI_CONTROLS.search(value)
    if found:
        raise ValueError(
            f"contains {_character(found.group())} at position {found.start()}: a name cannot"
            " hold bidirectional controls, which reorder the text around it"
        )
    return value


def _currency(value: str) -> str:
    if not is_currency(value):
        raise ValueError("is not an ISO 4217 currency code (three capital letters, e.g. USD)")
    return value


Amount = Annotated[Decimal, BeforeValidator(_decimal(AMOUNT))]
Percent = Annotated[Decimal, BeforeValidator(_decimal(PERCENT))]
Quantity = Annotated[Decimal, BeforeValidator(_decimal(QUANTITY))]
RuleValue = Annotated[Decimal, BeforeValidator(_decimal(RULE_VALUE))]
_Identifier = AfterValidator(_identifier)
CurrencyCode = Annotated[str, _Identifier, AfterValidator(_currency)]
MarketCode = Annotated[str, Field(min_length=1, max_length=TEXT_LENGTHS["market"]), _Identifier]
Symbol = Annotated[str, Field(min_length=1, max_length=TEXT_LENGTHS["symbol"]), _Identifier]
AssetName = Annotated[
    str,
    Field(max_length=TEXT_LENGTHS["asset_name"]),
    AfterValidator(_printable),
    AfterValidator(_display_name),
]
ClassName = Annotated[str, Field(min_length=1, max_length=TEXT_LENGTHS["class_name"]), _Identifier]
RuleId = Annotated[str, Field(min_length=1, max_length=TEXT_LENGTHS["rule_id"]), _Identifier]


class _Model(BaseModel):
    # Strict: "active": "yes" or "maxAssets": "5" are errors, not guesses.
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True
    )


class AssetIn(_Model):
    market: MarketCode
    symbol: Symbol
    currency: CurrencyCode
    name: AssetName | None = None


class AssetClassIn(_Model):
    name: ClassName
    target_min: Percent = Field(ge=0, le=100)
    target_max: Percent = Field(ge=0, le=100)
    max_assets: int | None = Field(default=None, gt=0, le=INT32_MAX)
    min_allocation_value: Amount | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _band(self) -> AssetClassIn:
        if self.target_min > self.target_max:
            raise ValueError(f"targetMin {self.target_min} is above targetMax {self.target_max}")
        return self


class HoldingIn(_Model):
    market: MarketCode
    symbol: Symbol
    quantity: Quantity = Field(gt=0)
    asset_class: ClassName


class RuleIn(Rule):
    """A criterion as the file gives it: `Rule` with the column limits of its operands."""

    model_config = ConfigDict(strict=True)

    id: RuleId
    asset_class: ClassName
    value: RuleValue | None = None
    value2: RuleValue | None = None

    def to_rule(self) -> Rule:
        return Rule.model_construct(self.model_fields_set, **dict(self))


class UserIn(_Model):
    id: Annotated[uuid.UUID, BeforeValidator(_identifier_text)] = Field(strict=False)  # a string
    base_currency: CurrencyCode
    default_contribution: Amount | None = Field(default=None, ge=0)
    active: bool = True
    asset_classes: list[AssetClassIn] = Field(default_factory=list)
    holdings: list[HoldingIn] = Field(default_factory=list)
    criteria: list[RuleIn] = Field(default_factory=list)

    def rules(self) -> list[Rule]:
        """The criteria as the plain `Rule`s the store compares and writes."""
        return [r.to_rule() for r in self.criteria]


_NOTHING: Any = object()  # a file-level error has no value to show


def preview(value: Any, limit: int = SHOWN) -> str:
    """`value` as an error shows it: JSON-like, about `limit` characters at most (a long
    string keeps its first `limit` characters and says how long it was)."""
    text = _render(value, limit, depth=0)
    if isinstance(value, str) or len(text) <= limit + 2:
        return text
    return text[:limit] + "…"


def _render(value: Any, limit: int, depth: int) -> str:
    if isinstance(value, str):
        shown = repr(value[:limit])
        return (
            shown
            if len(value) <= limit
            else f"{shown[:-1]}…{shown[-1]} ({len(value):,} characters)"
        )
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        # str() of a huge int is slow, and refused past 4,300 digits.
        return (
            str(value) if value.bit_length() < 128 else f"an integer of {value.bit_length()} bits"
        )
    if isinstance(value, Decimal | float):
        return str(value)  # exponent form for huge values: never a million digits
    if isinstance(value, _Unreadable):
        return _shortened(value.text)
    if isinstance(value, Mapping | list):
        if not value:
            return "{}" if isinstance(value, Mapping) else "[]"
        if depth >= 2:
            return (
                f"{{… {len(value)} keys}}"
                if isinstance(value, Mapping)
                else f"[… {len(value)} items]"
            )
        if isinstance(value, Mapping):
            parts = [
                f"{_render(k, 20, depth + 1)}: {_render(v, 20, depth + 1)}"
                for k, v in list(value.items())[:4]
            ]
            more = ", …" if len(value) > 4 else ""
            return "{" + ", ".join(parts) + more + "}"
        parts = [_render(v, 20, depth + 1) for v in value[:4]]
        return "[" + ", ".join(parts) + (", …" if len(value) > 4 else "") + "]"
    return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class FileError:
    path: str
    message: str
    value: Any = _NOTHING

    def __str__(self) -> str:
        message = self.message if len(self.message) <= 300 else self.message[:300] + "…"
        if self.value is _NOTHING:
            return f"{self.path}: {message}"
        return f"{self.path}: {message} (got {preview(self.value)})"


class LoadFileError(ValueError):
    """The file is rejected whole; `errors` holds every problem found."""

    def __init__(self, errors: list[FileError]) -> None:
        self.errors = errors
        super().__init__(
            f"{len(errors)} error(s); nothing was written:\n" + "\n".join(f"  {e}" for e in errors)
        )


@dataclass(frozen=True)
class LoadFile:
    assets: list[AssetIn]
    users: list[UserIn]


_UTF16_32 = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)


def _whole_file(message: str) -> LoadFileError:
    return LoadFileError([FileError("$", message)])


class _Repeated(dict[str, Any]):
    """An object that gave keys more than once: `repeated` holds each one's values in order."""

    repeated: dict[str, list[Any]]


@dataclass(frozen=True)
class _Unreadable:
    """Where the file holds a number no field can take (NaN, infinite, too long to read)."""

    text: str
    message: str


def _shortened(number: str) -> str:
    return number if len(number) <= 32 else f"{number[:30]}… ({len(number):,} characters)"


class _Reader:
    """`json.loads` hooks that read on past what a load file cannot hold, marking it where it
    is, so that every such value is reported by path rather than the first by line."""

    def __init__(self) -> None:
        self.marked = False

    def on_object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(pairs)
        if len(found) == len(pairs):
            return found
        self.marked = True
        repeated = _Repeated(found)
        values: dict[str, list[Any]] = {}
        for key, value in pairs:
            values.setdefault(key, []).append(value)
        repeated.repeated = {k: v for k, v in values.items() if len(v) > 1}
        return repeated

    def on_constant(self, name: str) -> _Unreadable:
        self.marked = True
        return _Unreadable(
            name,
            f"{name} is not a JSON value (JSON numbers are finite; amounts are decimal strings"
            " such as '3.10')",
        )

    def on_float(self, text: str) -> float | _Unreadable:
        value = float(text)
        if math.isfinite(value):
            return value  # refused by the schema, by path, as any binary float amount is
        self.marked = True
        return _Unreadable(
            text,
            f"the number {_shortened(text)} is out of range (it reads as infinity); amounts"
            " are decimal strings such as '3.10'",
        )

    def on_int(self, text: str) -> int | _Unreadable:
        try:
            return int(text)
        except ValueError:  # past sys.get_int_max_str_digits() (4,300 by default)
            self.marked = True
            return _Unreadable(text, f"the number {_shortened(text)} is out of range")


_SURROGATE = re.compile("[\ud800-\udfff]")
# Only a \uXXXX escape can put half a surrogate pair in a decoded string (UTF-8 cannot).
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(text: str) -> str | None:
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"contains {found.group().encode('unicode-escape').decode()} at position"
        f" {found.start()}, half of a UTF-16 surrogate pair without its other half: not a"
        " character (write the character itself, or both halves of its pair)"
    )


def _marked(doc: Any, at: tuple[int | str, ...] = ()) -> list[FileError]:
    """Every repeated key, unreadable number and lone surrogate in `doc` (found at path
    `at` of the file), by JSON path. Iterative: the document can be nested as deep as the
    parser went."""
    errors: list[FileError] = []
    stack: list[tuple[tuple[int | str, ...], Any]] = [(at, doc)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            repeated = value.repeated if isinstance(value, _Repeated) else {}
            children: list[tuple[tuple[int | str, ...], Any]] = []
            for key, last in value.items():
                if key in repeated:
                    shown = ", then ".join(preview(v, 20) for v in repeated[key])
                    errors.append(
                        FileError(
                            _json_path("$", (*loc, key)),
                            f"given {len(repeated[key])} times in the same object ({shown});"
                            " a key may appear once",
                        )
                    )
                problem = _lone_surrogate(key)
                if problem:
                    errors.append(FileError(_json_path("$", (*loc, key)), f"the key {problem}"))
                # Every value of a repeated key is read: what is wrong in each is listed.
                children.extend(((*loc, key), v) for v in repeated.get(key, [last]))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(((*loc, i), value[i]) for i in reversed(range(len(value))))
        elif isinstance(value, _Unreadable):
            errors.append(FileError(_json_path("$", loc), value.message))
        elif isinstance(value, str):
            problem = _lone_surrogate(value)
            if problem:
                errors.append(FileError(_json_path("$", loc), problem, value))
    return errors


def decode_load_file(data: bytes) -> Any:
    """The JSON in a load file's bytes: UTF-8 only (a UTF-8 byte-order mark is skipped).
    Another encoding, invalid JSON or nesting past `MAX_DEPTH` raises `LoadFileError` for
    the whole file; a repeated key, NaN, an infinite number or a lone surrogate raises it
    with the path of each."""
    for mark, encoding in _UTF16_32:
        if data.startswith(mark):
            raise _whole_file(
                f"the file is {encoding} (it starts with a {encoding} byte-order"
                " mark); save it as UTF-8"
            )
    if b"\x00" in data[:4096]:
        # JSON text never holds a raw NUL byte; UTF-16 and UTF-32 text is full of them.
        raise _whole_file(
            "the file holds NUL bytes: it looks UTF-16 or UTF-32 encoded; save it as UTF-8"
        )
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _whole_file(
            f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line} column"
            f" {column} (byte {exc.start}); save the file as UTF-8"
        ) from None
    if not data.strip():
        raise _whole_file("the file is empty")
    # The standard parser, not orjson: only its hooks see every key of an object (orjson keeps
    # the last of a repeated key) and let it read on past a value no field can hold.
    reader = _Reader()
    try:
        doc = json.loads(
            text,
            object_pairs_hook=reader.on_object,
            parse_constant=reader.on_constant,
            parse_float=reader.on_float,
            parse_int=reader.on_int,
        )
    except json.JSONDecodeError as exc:
        raise _whole_file(
            f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        # The standard parser stops near Python's recursion limit (about 1,000 levels, less
        # the caller's stack); orjson at a fixed MAX_DEPTH. A document between the two is
        # orjson's to read: it has no NaN, infinity or lone surrogate then, and it cannot be
        # a load file (five levels deep, every field a scalar), so the schema refuses it by
        # path whatever keys it repeats.
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            if "depth limit" in exc.msg or "recursion" in exc.msg.lower():
                raise _whole_file(f"nested deeper than {MAX_DEPTH} levels at {where}") from None
            raise _whole_file(f"not valid JSON at {where}: {exc.msg}") from None
    if reader.marked or _ESCAPED_SURROGATE.search(data):
        errors = _marked(doc)
        if errors:
            raise LoadFileError(errors)
    return doc


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _json_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _KEY.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{preview(part, 30)}]"  # an odd or huge key stays readable and short
    return path


def _pydantic_errors(prefix: str, exc: ValidationError) -> list[FileError]:
    return [
        FileError(
            _json_path(prefix, tuple(e["loc"])),
            e["msg"].removeprefix("Value error, "),
            e.get("input"),
        )
        for e in exc.errors(include_url=False)
    ]


def parse_load_file(raw: Any, *, markets: Collection[str]) -> LoadFile:
    """Validate a decoded load file; raise `LoadFileError` listing every error."""
    errors: list[FileError] = []
    if not isinstance(raw, Mapping):
        raise LoadFileError([FileError("$", "must be an object with 'assets' and 'users'", raw)])
    for key in sorted(set(raw) - {"assets", "users"}, key=str):
        errors.append(FileError(_json_path("$", (key,)), "unknown field", raw[key]))

    assets: list[AssetIn] = []
    seen_assets: dict[tuple[str, str], int] = {}
    duplicates: list[FileError] = []
    for i, item in enumerate(_list(raw, "assets", errors)):
        asset = check_asset(i, item, markets, errors)
        if asset is not None:
            duplicates.extend(check_asset_unique(i, asset, seen_assets))
            assets.append(asset)
    errors.extend(duplicates)

    users: list[UserIn] = []
    seen_users: dict[uuid.UUID, int] = {}
    for i, item in enumerate(_list(raw, "users", errors)):
        user = check_user(i, item, markets, seen_users, errors)
        if user is not None:
            users.append(user)

    if errors:
        raise LoadFileError(errors)
    return LoadFile(assets=assets, users=users)


def check_asset(
    i: int, item: Any, markets: Collection[str], errors: list[FileError]
) -> AssetIn | None:
    """`$.assets[i]` validated, or None; its errors appended to `errors`."""
    try:
        asset = AssetIn.model_validate(item)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(f"$.assets[{i}]", exc))
        return None
    if asset.market not in markets:
        errors.append(FileError(f"$.assets[{i}].market", "unknown market", asset.market))
    return asset


def check_asset_unique(i: int, asset: AssetIn, seen: dict[tuple[str, str], int]) -> list[FileError]:
    """`$.assets[i]` against the assets before it (`seen`, updated): a duplicate is an error,
    listed after every asset's own errors."""
    key = (asset.market, asset.symbol)
    if key in seen:
        return [
            FileError(
                f"$.assets[{i}]",
                f"duplicate of $.assets[{seen[key]}]",
                f"{asset.market}:{asset.symbol}",
            )
        ]
    seen[key] = i
    return []


def check_user(
    i: int,
    item: Any,
    markets: Collection[str],
    seen: dict[uuid.UUID, int] | None,
    errors: list[FileError],
) -> UserIn | None:
    """`$.users[i]` validated, also against the users before it (`seen`, updated; None: the
    caller looks for repeated ids itself), or None; its errors appended to `errors`."""
    try:
        user = UserIn.model_validate(item)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(f"$.users[{i}]", exc))
        return None
    if seen is not None:
        if user.id in seen:
            errors.append(duplicate_user(i, seen[user.id], user.id))
        seen.setdefault(user.id, i)
    errors.extend(_user_references(f"$.users[{i}]", user, markets))
    return user


def duplicate_user(i: int, first: int, user_id: uuid.UUID) -> FileError:
    return FileError(f"$.users[{i}].id", f"duplicate of $.users[{first}]", str(user_id))


def _list(raw: Mapping[str, Any], key: str, errors: list[FileError]) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        errors.append(FileError(f"$.{key}", "must be a list", value))
        return []
    return value


def _user_references(prefix: str, user: UserIn, markets: Collection[str]) -> list[FileError]:
    errors: list[FileError] = []
    classes: dict[str, int] = {}
    for j, cls in enumerate(user.asset_classes):
        if cls.name in classes:
            errors.append(
                FileError(f"{prefix}.assetClasses[{j}].name", "duplicate class name", cls.name)
            )
        classes.setdefault(cls.name, j)
    total_min = sum((c.target_min for c in user.asset_classes), Decimal(0))
    if total_min > 100:
        errors.append(
            FileError(
                f"{prefix}.assetClasses",
                "targetMin values add up to more than 100",
                format(total_min, "f"),
            )
        )
    held: dict[tuple[str, str], int] = {}
    for j, holding in enumerate(user.holdings):
        path = f"{prefix}.holdings[{j}]"
        if holding.market not in markets:
            errors.append(FileError(f"{path}.market", "unknown market", holding.market))
        if holding.asset_class not in classes:
            errors.append(
                FileError(
                    f"{path}.assetClass", "not one of the user's assetClasses", holding.asset_class
                )
            )
        key = (holding.market, holding.symbol)
        if key in held:
            errors.append(
                FileError(
                    path,
                    f"duplicate holding of {prefix}.holdings[{held[key]}]",
                    f"{holding.market}:{holding.symbol}",
                )
            )
        held.setdefault(key, j)
    rule_ids: dict[str, int] = {}
    for j, rule in enumerate(user.criteria):
        if rule.asset_class not in classes:
            errors.append(
                FileError(
                    f"{prefix}.criteria[{j}].assetClass",
                    "not one of the user's assetClasses",
                    rule.asset_class,
                )
            )
        if rule.id in rule_ids:
            errors.append(FileError(f"{prefix}.criteria[{j}].id", "duplicate rule id", rule.id))
        rule_ids.setdefault(rule.id, j)
    return errors
