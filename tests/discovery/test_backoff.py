"""Retry delays of discovery: capped exponential backoff with jitter."""

from __future__ import annotations

import random

import pytest

from ollama_balancer.core.backoff import Backoff


class Fixed(random.Random):
    """A random source that always draws ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("failures", "draw", "delay"),
    [
        pytest.param(1, 0.0, 0.5, id="first failure, no jitter drawn"),
        pytest.param(2, 0.0, 1.0, id="doubles"),
        pytest.param(4, 0.0, 4.0, id="doubles again"),
        pytest.param(10, 0.0, 30.0, id="capped"),
        pytest.param(1, 1.0, 0.25, id="most jitter: half the delay"),
        pytest.param(10, 0.5, 22.5, id="jitter below the cap"),
        pytest.param(0, 0.0, 0.5, id="no failure counts as the first"),
    ],
)
def test_delay(failures: int, draw: float, delay: float) -> None:
    assert Backoff(0.5, 30.0, 0.5).delay(failures, Fixed(draw)) == pytest.approx(delay)


def test_without_jitter_the_delay_is_exact() -> None:
    assert Backoff(1.0, 8.0, 0.0).delay(3, random.Random(7)) == 4.0


def test_jitter_spreads_replicas() -> None:
    backoff = Backoff(1.0, 30.0, 0.5)
    delays = {backoff.delay(3, random.Random(seed)) for seed in range(20)}
    assert len(delays) == 20 and all(2.0 <= d <= 4.0 for d in delays)
