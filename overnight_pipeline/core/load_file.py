"""The `overnight load` file (BEHAVIOUR §10): validated whole, every error listed by JSON path.

Each asset and user is validated by the models of `load_fields` (what each value's column
holds), then against the rest of the file: assets given twice, users given twice, holdings
and criteria naming a class the user does not have, class targets adding up past 100.
The file's JSON is decoded by `load_json.decode_load_file`.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from overnight_pipeline.core.load_errors import FileError, LoadFileError, json_path
from overnight_pipeline.core.load_fields import AssetIn, UserIn


@dataclass(frozen=True)
class LoadFile:
    assets: list[AssetIn]
    users: list[UserIn]


def _pydantic_errors(prefix: str, exc: ValidationError) -> list[FileError]:
    return [
        FileError(
            json_path(prefix, tuple(e["loc"])),
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
        errors.append(FileError(json_path("$", (key,)), "unknown field", raw[key]))

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
