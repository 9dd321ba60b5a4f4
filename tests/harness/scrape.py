"""A parsed Prometheus exposition (``/metrics``), looked up by sample name and labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Labels", "Scrape", "labels"]

Labels = frozenset[tuple[str, str]]


def labels(**kw: str) -> Labels:
    return frozenset(kw.items())


@dataclass
class Scrape:
    """Parsed /metrics: (sample name, labels) → value, plus the raw text."""

    text: str
    values: dict[tuple[str, Labels], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out = cls(text)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.values[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def get(self, name: str, **kw: str) -> float | None:
        return self.values.get((name, labels(**kw)))

    def series(self, name: str) -> dict[Labels, float]:
        return {lab: v for (n, lab), v in self.values.items() if n == name}
