"""The one `Definitions` object that `workspace.yaml` loads (`dagster dev`, the daemon)."""

from __future__ import annotations

from overnight_pipeline.defs import build_definitions
from overnight_pipeline.settings import get_settings

defs = build_definitions(get_settings())
