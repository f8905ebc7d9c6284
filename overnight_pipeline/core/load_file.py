"""The `overnight load` file (SPEC §10): validated whole, every error listed by JSON path."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from overnight_pipeline.core.money import DecimalString
from overnight_pipeline.core.scoring import Rule

CURRENCY = r"^[A-Z]{3}$"


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )


class AssetIn(_Model):
    market: str = Field(min_length=1, max_length=16)
    symbol: str = Field(min_length=1, max_length=32)
    currency: str = Field(pattern=CURRENCY)
    name: str | None = Field(default=None, max_length=200)


class AssetClassIn(_Model):
    name: str = Field(min_length=1, max_length=100)
    target_min: DecimalString = Field(ge=0, le=100)
    target_max: DecimalString = Field(ge=0, le=100)
    max_assets: int | None = Field(default=None, strict=True, gt=0)
    min_allocation_value: DecimalString | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _band(self) -> AssetClassIn:
        if self.target_min > self.target_max:
            raise ValueError(f"targetMin {self.target_min} is above targetMax {self.target_max}")
        return self


class HoldingIn(_Model):
    market: str = Field(min_length=1, max_length=16)
    symbol: str = Field(min_length=1, max_length=32)
    quantity: DecimalString = Field(gt=0)
    asset_class: str = Field(min_length=1, max_length=100)


class UserIn(_Model):
    id: uuid.UUID
    base_currency: str = Field(pattern=CURRENCY)
    default_contribution: DecimalString | None = Field(default=None, ge=0)
    active: bool = True
    asset_classes: list[AssetClassIn] = Field(default_factory=list)
    holdings: list[HoldingIn] = Field(default_factory=list)
    criteria: list[Rule] = Field(default_factory=list)


@dataclass(frozen=True)
class FileError:
    path: str
    message: str
    value: Any

    def __str__(self) -> str:
        return f"{self.path}: {self.message} (got {self.value!r})"


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


def _json_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _pydantic_errors(prefix: str, exc: ValidationError) -> list[FileError]:
    return [
        FileError(_json_path(prefix, tuple(e["loc"])), e["msg"].removeprefix("Value error, "),
                  e.get("input"))
        for e in exc.errors()
    ]  # fmt: skip


def _find(raw: Any, *keys: int | str) -> Any:
    for key in keys:
        try:
            raw = raw[key]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def parse_load_file(raw: Any, *, markets: Collection[str]) -> LoadFile:
    """Validate a decoded load file; raise `LoadFileError` listing every error."""
    errors: list[FileError] = []
    if not isinstance(raw, Mapping):
        raise LoadFileError([FileError("$", "must be an object with 'assets' and 'users'", raw)])
    for key in sorted(set(raw) - {"assets", "users"}):
        errors.append(FileError(f"$.{key}", "unknown field", raw[key]))

    assets: list[AssetIn] = []
    for i, item in enumerate(_list(raw, "assets", errors)):
        try:
            asset = AssetIn.model_validate(item)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(f"$.assets[{i}]", exc))
            continue
        if asset.market not in markets:
            errors.append(FileError(f"$.assets[{i}].market", "unknown market", asset.market))
        assets.append(asset)
    seen_assets: dict[tuple[str, str], int] = {}
    for i, asset in enumerate(assets):
        key = (asset.market, asset.symbol)
        if key in seen_assets:
            errors.append(FileError(f"$.assets[{i}]", f"duplicate of $.assets[{seen_assets[key]}]",
                                    f"{asset.market}:{asset.symbol}"))  # fmt: skip
        seen_assets.setdefault(key, i)

    users: list[UserIn] = []
    seen_users: dict[uuid.UUID, int] = {}
    for i, item in enumerate(_list(raw, "users", errors)):
        try:
            user = UserIn.model_validate(item)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(f"$.users[{i}]", exc))
            continue
        if user.id in seen_users:
            errors.append(FileError(f"$.users[{i}].id", f"duplicate of $.users[{seen_users[user.id]}]",
                                    str(user.id)))  # fmt: skip
        seen_users.setdefault(user.id, i)
        errors.extend(_user_references(f"$.users[{i}]", user, markets))
        users.append(user)

    if errors:
        raise LoadFileError(errors)
    return LoadFile(assets=assets, users=users)


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
            errors.append(FileError(f"{prefix}.assetClasses[{j}].name", "duplicate class name",
                                    cls.name))  # fmt: skip
        classes.setdefault(cls.name, j)
    total_min = sum((c.target_min for c in user.asset_classes), Decimal(0))
    if total_min > 100:
        errors.append(FileError(f"{prefix}.assetClasses", "targetMin values add up to more than 100",
                                format(total_min, "f")))  # fmt: skip
    held: dict[tuple[str, str], int] = {}
    for j, holding in enumerate(user.holdings):
        path = f"{prefix}.holdings[{j}]"
        if holding.market not in markets:
            errors.append(FileError(f"{path}.market", "unknown market", holding.market))
        if holding.asset_class not in classes:
            errors.append(FileError(f"{path}.assetClass", "not one of the user's assetClasses",
                                    holding.asset_class))  # fmt: skip
        key = (holding.market, holding.symbol)
        if key in held:
            errors.append(FileError(path, f"duplicate holding of {prefix}.holdings[{held[key]}]",
                                    f"{holding.market}:{holding.symbol}"))  # fmt: skip
        held.setdefault(key, j)
    rule_ids: dict[str, int] = {}
    for j, rule in enumerate(user.criteria):
        if rule.asset_class not in classes:
            errors.append(FileError(f"{prefix}.criteria[{j}].assetClass",
                                    "not one of the user's assetClasses", rule.asset_class))  # fmt: skip
        if rule.id in rule_ids:
            errors.append(FileError(f"{prefix}.criteria[{j}].id", "duplicate rule id", rule.id))
        rule_ids.setdefault(rule.id, j)
    return errors
