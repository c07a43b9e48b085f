"""What a sweep varies: ``--vary NAME=V1,V2,...`` (a list: each value tried) or
``--vary NAME=LOW:HIGH[:log]`` (a range Optuna samples from, on a log scale if asked), for any
number or choice among the training parameters.

Every value and both ends of a range are checked as a training's own flags are
(``TrainingParams``), so a value the field does not allow is refused before any trial, with
the field's range named.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from core.errors import StudioError
from core.params import TrainingParams, allowed_range, validate_params

# what a trial's rows must not differ in when the test rows are a split of the dataset:
# the split would hold other rows for each trial, and their scores could not be compared
SPLIT_FIELDS = ("seed", "validation_split", "test_split")
MAX_CORNERS = 64  # combinations checked before the first trial (and planned for --parallel)


@dataclass(frozen=True)
class Vary:
    """One varied field: its values (a list) or its range."""

    name: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def is_list(self) -> bool:
        return bool(self.values)

    def distribution(self) -> BaseDistribution:
        """Optuna's description of it: a choice among the values, or an int or float range."""
        if self.is_list:
            return CategoricalDistribution(self.values)
        if _kind(self.name) is int:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def corners(self) -> tuple[Any, ...]:
        """The values that bound the memory a trial needs: every value, or the range's ends."""
        return self.values or (self.low, self.high)

    def describe(self) -> str:
        if self.is_list:
            return f"{self.name} in {', '.join(map(str, self.values))}"
        scale = " (log scale)" if self.log else ""
        return f"{self.name} from {self.low:g} to {self.high:g}{scale}"


def varyable() -> list[str]:
    """The fields a sweep can vary: numbers and choices (not lists or texts)."""
    return [name for name in TrainingParams.model_fields if _kind(name) is not None]


def parse_vary(text: str) -> Vary:
    """``NAME=V1,V2`` or ``NAME=LOW:HIGH[:log]``, checked against the field's range."""
    name, sep, spec = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not spec.strip():
        raise StudioError(
            f"--vary {text}: give NAME=V1,V2,... or NAME=LOW:HIGH[:log]",
            hint="e.g. --vary rank=4,8,16 --vary learning_rate=1e-4:1e-3:log",
        )
    kind = _kind(name)
    if kind is None:
        known = name in TrainingParams.model_fields
        raise StudioError(
            f"--vary {name}: " + ("not a number or a choice" if known else "unknown field"),
            hint=f"fields a sweep can vary: {', '.join(varyable())}",
        )
    if ":" in spec and kind in (int, float):
        return _range(name, spec)
    values = tuple(dict.fromkeys(_value(name, v.strip()) for v in spec.split(",") if v.strip()))
    if not values:
        raise StudioError(f"--vary {name}: no values", hint="give at least one value")
    return Vary(name, values=values)


def _range(name: str, spec: str) -> Vary:
    parts = [p.strip() for p in spec.split(":")]
    log = parts[-1].lower() == "log"
    if log:
        parts = parts[:-1]
    if len(parts) != 2:
        raise StudioError(
            f"--vary {name}={spec}: a range is LOW:HIGH, or LOW:HIGH:log",
            hint=f"e.g. --vary {name}=1e-4:1e-3:log",
        )
    low, high = (_value(name, p) for p in parts)
    if low >= high:
        raise StudioError(
            f"--vary {name}={spec}: the range is empty (LOW must be below HIGH)",
            hint=f"allowed: {allowed_range(name)}",
        )
    if log and low <= 0:
        raise StudioError(f"--vary {name}={spec}: a log scale needs LOW above 0")
    return Vary(name, low=low, high=high, log=log)


def _value(name: str, text: str) -> Any:
    """One value as the field takes it (``"8"`` -> 8), or a refusal naming the range."""
    try:
        return getattr(validate_params({name: text}), name)
    except StudioError as exc:
        detail = exc.message.removeprefix("invalid training parameters:\n- ")
        raise StudioError(f"--vary {name}: {detail}", hint=_allowed(name)) from None


def _allowed(name: str) -> str:
    kind = TrainingParams.model_fields[name].annotation
    choices = get_args(kind) if get_origin(kind) is Literal else None
    return f"allowed: {', '.join(choices)}" if choices else f"allowed: {allowed_range(name)}"


def _kind(name: str) -> type | None:
    """int, float, bool or str (a choice) for a field a sweep can vary; None otherwise."""
    field = TrainingParams.model_fields.get(name)
    if field is None:
        return None
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return str
    options = [a for a in (get_args(annotation) or (annotation,)) if a is not type(None)]
    return options[0] if len(options) == 1 and options[0] in (int, float, bool) else None


def check_space(varied: list[Vary], fixed: TrainingParams, split_test: bool) -> None:
    """The varied fields together with the fixed ones: none twice, none also fixed, and the
    test rows the same for every trial (each combination is then settled by ``settle``)."""
    names = [v.name for v in varied]
    twice = {n for n in names if names.count(n) > 1}
    if twice or not varied:
        what = f"{', '.join(sorted(twice))} varied twice" if twice else "nothing varied"
        raise StudioError(f"--vary: {what}", hint="give each field once: --vary NAME=...")
    both = [n for n in names if n in fixed.model_fields_set]
    if both:
        raise StudioError(
            f"{', '.join(both)}: both fixed (--{both[0].replace('_', '-')}) and varied (--vary)",
            hint="give it one way",
        )
    if split_test and (clash := [n for n in names if n in SPLIT_FIELDS]):
        raise StudioError(
            f"--vary {clash[0]} with --test-split: each trial would hold out other test rows, "
            "and their scores could not be compared",
            hint="give the test rows as a file (--test-data) to vary it",
        )


def corners(varied: list[Vary]) -> list[dict[str, Any]]:
    """Every combination of the values and range ends (what bounds a trial's memory)."""
    names = [v.name for v in varied]
    return [
        dict(zip(names, c, strict=True)) for c in itertools.product(*(v.corners() for v in varied))
    ]


def settle(fixed: TrainingParams, settings: dict[str, Any]) -> TrainingParams:
    """One trial's parameters: the fixed ones with the trial's settings, checked together."""
    values = fixed.model_dump(exclude_unset=True) | settings
    try:
        return validate_params(values)
    except StudioError as exc:
        said = ", ".join(f"{k}={v}" for k, v in settings.items())
        raise StudioError(f"the settings {said} are not a valid training: {exc.message}") from None


def grid_size(varied: list[Vary]) -> int | None:
    """How many trials a grid has (every field a list), or None with a range."""
    if not all(v.is_list for v in varied):
        return None
    size = 1
    for v in varied:
        size *= len(v.values)
    return size


def words(settings: dict[str, Any]) -> str:
    """A trial's settings as people read them: ``rank=8, learning_rate=0.0003``."""
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()
    )
