"""The settings kit (``ollama_wire.config``): how a declared setting is read, named and
checked, on a small root of its own; then the balancer's and the operator's real tables."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import pytest

from modelpool_operator.settings import OperatorSettings
from ollama_balancer.settings import BalancerSettings, load_settings
from ollama_wire.config import Group, Root, SettingsError, add_arguments, setting


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def _halves(text: str) -> tuple[str, str]:
    left, sep, right = text.partition("/")
    if not sep:
        raise ValueError("expected LEFT/RIGHT")
    return (left, right)


@dataclass(frozen=True, slots=True)
class Plain(Group):
    count: int = setting(2, "how many", ge=1)
    ratio: float = setting(0.5, "a fraction", unit="fraction", gt=0, le=1)
    on: bool = setting(False, "a switch", short="-o")
    names: tuple[str, ...] = setting((), "some names", flag="--name")
    colour: Colour = setting(Colour.RED, "a colour")
    level: str = setting(
        "low", "a level", choices=("low", "high"), invalid="no such level: {value!r}"
    )


@dataclass(frozen=True, slots=True)
class Extra(Group):
    pair: tuple[str, str] | None = setting(None, "a pair", key="extra_pair", parse=_halves)
    home: str = setting("~", "a home", key="extra_home", also_env=("HOME",))
    low: int = setting(0, "lower bound")
    high: int = setting(10, "upper bound")

    def check(self) -> None:
        if self.low > self.high:
            raise SettingsError("extra: low above high")


@dataclass(frozen=True, slots=True)
class Toy(Root):
    ENV_PREFIX: ClassVar[str] = "TOY_"

    plain: Plain = field(default_factory=Plain)
    extra: Extra = field(default_factory=Extra)


@dataclass(frozen=True, slots=True)
class QuietToy(Toy):
    EMPTY_ENV_IS_UNSET: ClassVar[bool] = True


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ reading a value


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        pytest.param("count", "7", 7, id="int"),
        pytest.param("ratio", "0.25", 0.25, id="float"),
        *(pytest.param("on", t, True, id=f"true: {t}") for t in ("1", "true", "Yes", "ON")),
        *(pytest.param("on", t, False, id=f"false: {t}") for t in ("0", "false", "no", "off")),
        pytest.param("names", " a, b ,,c ", ("a", "b", "c"), id="list: comma-separated"),
        pytest.param("colour", "Blue", Colour.BLUE, id="enumeration, any case"),
        pytest.param("level", "HIGH", "high", id="choice, any case"),
        pytest.param("extra_pair", "x/y", ("x", "y"), id="parsed by the setting"),
    ],
)
def test_a_variable_is_read_as_its_type(key: str, text: str, value: object) -> None:
    values = Toy.collect(environ={"TOY_" + key.upper(): text})
    assert values == {key: value}
    assert type(values[key]) is type(value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"TOY_COUNT": "many"}, "TOY_COUNT: invalid literal", id="not an integer"),
        pytest.param({"TOY_RATIO": "half"}, "TOY_RATIO: could not convert", id="not a number"),
        pytest.param({"TOY_ON": "perhaps"}, "TOY_ON: not a boolean: 'perhaps'", id="not a bool"),
        pytest.param({"TOY_EXTRA_PAIR": "xy"}, "TOY_EXTRA_PAIR: expected LEFT/RIGHT", id="parse"),
        pytest.param(
            {"TOY_COLOUR": "green"}, "colour: must be one of red, blue", id="choices: the key"
        ),
        pytest.param({"TOY_LEVEL": "mid"}, "no such level: .mid.", id="choices: its own message"),
    ],
)
def test_errors_name_the_variable_or_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Toy.collect(environ=environ)


def test_typed_values_pass_through() -> None:
    """A YAML document or a test's dict holds values already typed."""
    base = {"count": 3, "on": True, "names": ["a", "b"], "extra_pair": ("p", "q")}
    assert Toy.collect(base=base) == {
        "count": 3,
        "on": True,
        "names": ("a", "b"),
        "extra_pair": ("p", "q"),
    }
    assert Toy.collect(base={"names": {"m": 1}}) == {"names": ("m=1",)}
    with pytest.raises(SettingsError, match="count: not an integer"):
        Toy.collect(base={"count": True})
    with pytest.raises(SettingsError, match="unknown setting 'colour_x'"):
        Toy.collect(base={"colour_x": "red"})


def test_precedence_flags_over_environment_over_base() -> None:
    base = {"count": 3, "ratio": 0.75, "on": True}
    environ = {"TOY_COUNT": "4", "TOY_RATIO": "0.1"}
    values = Toy.collect(parse("--count", "5"), environ, base)
    assert values == {"count": 5, "ratio": 0.1, "on": True}
    assert Toy.collect({"count": None}, {"TOY_COUNT": "4"}) == {"count": 4}  # None: not given


def test_an_empty_variable_is_a_value_unless_the_root_says_otherwise() -> None:
    environ = {"TOY_LEVEL": "", "TOY_EXTRA_HOME": "", "HOME": "/home/x"}
    with pytest.raises(SettingsError, match="no such level: ''"):
        Toy.collect(environ=environ)
    assert QuietToy.collect(environ=environ) == {"extra_home": "/home/x"}  # then HOME


def test_a_fallback_variable_speaks_only_when_the_own_one_is_absent() -> None:
    assert Toy.collect(environ={"HOME": "/h"}) == {"extra_home": "/h"}
    assert Toy.collect(environ={"HOME": "/h", "TOY_EXTRA_HOME": "/own"}) == {"extra_home": "/own"}


# ------------------------------------------------------------------ flags


def test_flags_follow_the_declaration() -> None:
    args = parse("-o", "--name", "a,b", "--name", "c", "--colour", "BLUE", "--extra-pair", "l/r")
    values = Toy.collect(args)
    assert values == {
        "on": True,
        "names": ("a", "b", "c"),
        "colour": Colour.BLUE,
        "extra_pair": ("l", "r"),
    }
    assert Toy.collect(parse("--no-on")) == {"on": False}
    assert Toy.collect(parse()) == {}  # nothing given leaves everything to the other sources
    with pytest.raises(SystemExit):  # argparse refuses a value outside the choices
        parse("--level", "mid")


def test_help_names_the_variable_the_default_and_the_unit() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    out = " ".join(parser.format_help().split())
    assert "--ratio FRACTION a fraction [env TOY_RATIO; default: 0.5]" in out
    assert "-o, --on, --no-on a switch [env TOY_ON; default: False]" in out
    assert "[env TOY_EXTRA_HOME, else HOME; default: ~]" in out
    assert "[env TOY_EXTRA_PAIR; default: none]" in out
    assert "plain:" in out and "extra:" in out  # one section per group


# ------------------------------------------------------------------ groups and roots


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"count": 0}, "count: must be >= 1", id="ge"),
        pytest.param({"ratio": 0.0}, "ratio: must be > 0", id="gt"),
        pytest.param({"ratio": 1.5}, "ratio: must be <= 1", id="le"),
        pytest.param({"colour": "green"}, "colour: must be one of red, blue", id="choices"),
        pytest.param({"low": 11}, "extra: low above high", id="the group's own rule"),
        pytest.param({"nonsense": 1}, "unknown setting 'nonsense'", id="unknown key"),
    ],
)
def test_a_group_is_never_built_out_of_bounds(values: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Toy.build(**values)


def test_build_and_replace_route_keys_to_their_groups() -> None:
    toy = Toy.build(count=4, extra_pair=("a", "b"))
    assert (toy.plain.count, toy.extra.pair, toy.plain.ratio) == (4, ("a", "b"), 0.5)
    changed = toy.replace(ratio=0.25)
    assert (changed.plain.count, changed.plain.ratio, changed.extra) == (4, 0.25, toy.extra)
    assert toy.plain.ratio == 0.5  # frozen: a copy
    with pytest.raises(SettingsError, match="ratio: must be > 0"):
        toy.replace(ratio=0.0)


def test_a_root_holds_only_groups() -> None:
    @dataclass(frozen=True, slots=True)
    class Broken(Root):
        count: int = 1

    with pytest.raises(TypeError, match="not a settings group"):
        Broken.declared()


# ------------------------------------------------------------------ the real tables

ROOTS = [
    pytest.param(BalancerSettings, "OLLAMA_FLEET_", id="balancer"),
    pytest.param(OperatorSettings, "OLLAMA_FLEET_OPERATOR_", id="operator"),
]
BOUNDED = [
    pytest.param(root, row.key, id=f"{root.__name__}.{row.path}")
    for root in (BalancerSettings, OperatorSettings)
    for row in root.declared()
    if (row.setting.gt, row.setting.ge, row.setting.le) != (None, None, None) or row.setting.choices
]


def load(root: type[Root], environ: dict[str, str]) -> Root:
    if root is BalancerSettings:
        return load_settings(None, environ)
    return OperatorSettings.from_sources({}, environ)


@pytest.mark.parametrize(("root", "prefix"), ROOTS)
def test_every_setting_is_documented_and_named_once(root: type[Root], prefix: str) -> None:
    rows = root.declared()
    assert rows
    for row in rows:
        assert row.setting.doc.strip() == row.setting.doc and len(row.setting.doc) > 10, row.key
        assert row.env == prefix + row.key.upper(), row.key
        assert row.flag.startswith("--"), row.key
    for names in ([r.key for r in rows], [r.env for r in rows], [r.flag for r in rows]):
        assert len(names) == len(set(names))
    parser = argparse.ArgumentParser()
    add_arguments(parser, root)  # argparse refuses a flag declared twice
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {r.flag for r in rows} <= flags


@pytest.mark.parametrize(("root", "prefix"), ROOTS)
def test_defaults_are_within_bounds(root: type[Root], prefix: str) -> None:
    defaults = root()
    for row in root.declared():
        assert getattr(getattr(defaults, row.group), row.attr) == row.default
        assert row.setting.violation(row.key, row.default) is None, row.key
    assert load(root, {}) == defaults


def _outside(limit: float, below: bool, kind: type) -> float:
    step = 1 if kind is int else 0.5
    return limit - step if below else limit + step


@pytest.mark.parametrize(("root", "key"), BOUNDED)
def test_bounds_and_choices_are_enforced_from_every_source(root: type[Root], key: str) -> None:
    row = root.row(key)
    spec = row.setting
    bad: list[object] = []
    if spec.gt is not None:
        bad.append(int(spec.gt) if row.kind is int else spec.gt)
    if spec.ge is not None:
        bad.append(_outside(spec.ge, True, row.kind))
    if spec.le is not None:
        bad.append(_outside(spec.le, False, row.kind))
    if spec.choices:
        bad.append("nonsense")
    assert bad
    for value in bad:
        with pytest.raises(SettingsError) as built:
            root.build(**{key: value})
        message = str(built.value)
        assert key in message or message == spec.invalid.format(key=key, value=value)
        with pytest.raises(SettingsError) as read:
            load(root, {row.env: str(value)})
        assert str(read.value) == message  # the same words whichever source gave it


@pytest.mark.parametrize(
    ("root", "environ", "message"),
    [
        pytest.param(
            BalancerSettings, {"OLLAMA_FLEET_POLL_TIMEOUT": "0"}, "poll_timeout: must be > 0"
        ),
        pytest.param(
            BalancerSettings,
            {"OLLAMA_FLEET_MAX_HEADER_BYTES": "100"},
            "max_header_bytes: must be >= 1024",
        ),
        pytest.param(
            BalancerSettings,
            {"OLLAMA_FLEET_QUEUE_HOLD_UNAVAILABLE": "-1"},
            "queue_batch_aging, queue_hold_unavailable: must be >= 0",
        ),
        pytest.param(
            BalancerSettings,
            {"OLLAMA_FLEET_WORKERS": "-1"},
            "workers: must be >= 0 (0 = one per CPU the container may use)",
        ),
        pytest.param(
            BalancerSettings, {"OLLAMA_FLEET_ADMIN": "open"}, "admin: must be one of deny, fanout"
        ),
        pytest.param(
            BalancerSettings,
            {"OLLAMA_FLEET_LEASE_TTL": "10"},
            "lease_renew_interval: must be at most half of lease_ttl",
        ),
        pytest.param(
            OperatorSettings,
            {"OLLAMA_FLEET_OPERATOR_RESYNC_SECONDS": "0"},
            "resync interval must be > 0 seconds",
        ),
        pytest.param(
            OperatorSettings,
            {"OLLAMA_FLEET_OPERATOR_PULLS_PER_POD": "0"},
            "concurrency, pulls per pod, reconcile concurrency and attempts must be >= 1",
        ),
        pytest.param(
            OperatorSettings,
            {"OLLAMA_FLEET_OPERATOR_STATUS_INTERVAL_SECONDS": "-1"},
            "pin check interval must be > 0 and status interval >= 0 seconds",
        ),
        pytest.param(
            OperatorSettings,
            {"OLLAMA_FLEET_OPERATOR_LEASE_SECONDS": "2"},
            "the lease must last at least 3 seconds",
        ),
        pytest.param(
            OperatorSettings,
            {"OLLAMA_FLEET_OPERATOR_METRICS_PORT": "70000"},
            "metrics port must be 0..65535, not 70000",
        ),
        pytest.param(
            OperatorSettings,
            {
                "OLLAMA_FLEET_OPERATOR_ALL_NAMESPACES": "true",
                "OLLAMA_FLEET_OPERATOR_NAMESPACES": "a",
            },
            "--all-namespaces and --namespace are exclusive",
        ),
    ],
)
def test_messages_from_before_the_kit_are_kept(
    root: type[Root], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load(root, environ)
    assert str(info.value) == message
