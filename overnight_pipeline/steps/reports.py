"""What a step did: its measures for the asset's metadata, its failed users, its time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepReport:
    """What a step did, for the asset's metadata and the run's summary."""

    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.metrics.items() if v is not None)
        text = f"| measure | value |\n| --- | --- |\n{rows}\n| seconds | {self.seconds:.2f} |"
        if self.failures:
            text += "\n\n| user | stage | error |\n| --- | --- | --- |\n" + "\n".join(
                f"| {f['user']} | {f['stage']} | {f['error'][:200]} |" for f in self.failures[:20]
            )
        return text
