"""The fields of an `overnight load` file (BEHAVIOUR §10) and the models of its assets and
users: every value is checked against what its column holds (length, digits before and
after the point, integer range), so a file the validator accepts never fails in the
database; identifiers that would display like a different one (invisible, direction-
changing or line-breaking characters, blank or padded values) are refused.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.alias_generators import to_camel

from overnight_pipeline.core.money import is_currency
from overnight_pipeline.core.scoring import Rule

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
