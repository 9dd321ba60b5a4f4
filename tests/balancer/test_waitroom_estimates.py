"""The wait room makes again, from the learned rates, an expected slot-seconds that a
request's arrival guessed on the default rates (the scheduler orders by it)."""

from __future__ import annotations

import random

import pytest

from ollama_balancer.core.occupancy import Occupancy
from ollama_balancer.core.queueing import QueueSettings, Waiting
from ollama_balancer.core.routing import Policy
from ollama_balancer.core.tokens import DEFAULT_DECODE_SECONDS, RateBook, TokenEstimate
from ollama_balancer.polling import FleetTracker
from ollama_balancer.waitroom import WaitRoom
from ollama_wire.names import canonical

M = canonical("llama3")
ESTIMATE = TokenEstimate(prompt=0, output=200)
GUESS = 200 * DEFAULT_DECODE_SECONDS


def room(rates: RateBook | None) -> WaitRoom:
    return WaitRoom(
        QueueSettings(enabled=True),
        FleetTracker(),
        Occupancy,
        Policy(),
        rng=random.Random(1),
        rates=rates,
    )


def waiting(learned: bool, estimate: TokenEstimate | None = ESTIMATE) -> Waiting:
    return Waiting("r", M, "t", expected_seconds=GUESS, rates_learned=learned, estimate=estimate)


def learned_rates() -> RateBook:
    rates = RateBook()
    rates.learn(M, None, None, 100, round(0.5e9))  # 5 ms a token, 1/5 of the default
    return rates


@pytest.mark.parametrize(
    ("rates", "w", "expected"),
    [
        pytest.param(learned_rates(), waiting(False), 200 * 0.005, id="guessed, now learned"),
        pytest.param(RateBook(), waiting(False), GUESS, id="guessed, still unknown"),
        pytest.param(learned_rates(), waiting(True), GUESS, id="made on learned rates: kept"),
        pytest.param(learned_rates(), waiting(False, None), GUESS, id="no estimate to redo"),
        pytest.param(None, waiting(False), GUESS, id="no rates given"),
    ],
)
def test_an_expected_time_guessed_on_default_rates_is_made_again(
    rates: RateBook | None, w: Waiting, expected: float
) -> None:
    got = room(rates)._current(w)
    assert got.expected_seconds == pytest.approx(expected)
    assert got.rates_learned == (w.rates_learned or expected != GUESS)
