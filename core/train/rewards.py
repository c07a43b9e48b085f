"""GRPO's rewards: what an answer is worth, by checks a person can read, or write.

A reward is ``f(prompt, completion, row) -> float``: ``prompt`` the rendered prompt text,
``completion`` the generated text, ``row`` the dataset row as read (so a row's ``answer``,
``keywords`` or ``schema`` reach the check). ``--reward NAME[:WEIGHT]`` picks them, repeatable;
their weighted sum is the answer's reward. Built-ins:

- ``exact``: the answer taken from the completion equals the row's ``answer``: the text inside
  ``<answer>...</answer>`` when there is one, else (for a numeric ``answer``) the last number
  in the completion, else the whole completion; numbers compare as numbers, text without
  case, punctuation or surrounding space;
- ``contains``: the share of the row's ``keywords`` (a list, or one comma-separated string)
  that the completion contains, without case;
- ``regex:PATTERN``: 1 when the pattern is found in the completion (Python's ``re.search``);
- ``length:MIN-MAX``: 1 when the completion has MIN to MAX words;
- ``json``: 1 when the completion (or its one fenced code block) parses as JSON, and, when
  the row has a ``schema``, validates against it (the ``jsonschema`` library);
- ``judge``: an LLM judge's 1-10 rating (``core.judge``'s rubric, or the row's ``rubric``),
  from an OpenAI-compatible endpoint (``--judge-url``: another ``lora-studio serve`` for a
  local model, Ollama, vLLM); the row's ``answer`` is given to the judge as a reference.

The user's own: ``--reward-file FILE.py`` (each public function with exactly the parameters
``prompt, completion, row`` is a reward; ``--reward NAME`` picks some of them by name). A file
is read without running it first (``check_file``: its syntax and signatures, with the line),
then imported by the worker. A reward that raises or returns something that is not a number
scores that answer 0; the failures are counted and the first message of each reward is kept,
to be said once (``Scorer``).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import StudioError
from core.judge import EndpointJudge, read_rubric, rubric_score

RewardFunction = Callable[[str, str, dict], float]
PARAMETERS = ["prompt", "completion", "row"]
_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class RewardError(StudioError):
    """A reward that cannot be used: a bad spec, a file that does not load, a bad signature."""


@dataclass(frozen=True)
class Reward:
    name: str  # as given: "exact", "regex:^A", or a function of a reward file
    weight: float
    fn: RewardFunction
    where: str = "built-in"  # or "FILE, line N"


def _text(value) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", str(value)).lower().split())


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def exact(prompt: str, completion: str, row: dict) -> float:
    expected = row.get("answer")
    if expected is None:
        raise ValueError('the row has no "answer" to compare with')
    tagged = _TAG.search(completion)
    wanted = _number(str(expected))
    if tagged:
        given = tagged.group(1).strip()
    elif wanted is not None:
        numbers = _NUMBER.findall(completion)
        given = numbers[-1] if numbers else ""
    else:
        given = completion
    if wanted is not None and (number := _number(given.strip())) is not None:
        return float(math.isclose(number, wanted, rel_tol=1e-9, abs_tol=1e-9))
    return float(_text(given) == _text(expected))


def contains(prompt: str, completion: str, row: dict) -> float:
    keywords = row.get("keywords")
    if isinstance(keywords, str):
        keywords = [k for k in keywords.split(",") if k.strip()]
    if not keywords or not isinstance(keywords, list):
        raise ValueError('the row has no "keywords" (a list, or a comma-separated string)')
    text = completion.lower()
    return sum(str(k).strip().lower() in text for k in keywords) / len(keywords)


def json_valid(prompt: str, completion: str, row: dict) -> float:
    fenced = _FENCE.search(completion)
    try:
        value = json.loads(fenced.group(1) if fenced else completion)
    except json.JSONDecodeError:
        return 0.0
    schema = row.get("schema")
    if schema is None:
        return 1.0
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.0
    return 1.0


def _regex(pattern: str) -> RewardFunction:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise RewardError(f"regex:{pattern}: not a regular expression ({exc})") from None
    return lambda prompt, completion, row: float(bool(compiled.search(completion)))


def _length(span: str) -> RewardFunction:
    found = re.fullmatch(r"(\d+)-(\d+)", span)
    if not found or int(found.group(1)) > int(found.group(2)):
        raise RewardError(f"length:{span}: give the words as MIN-MAX, e.g. length:20-80")
    low, high = int(found.group(1)), int(found.group(2))
    return lambda prompt, completion, row: float(low <= len(completion.split()) <= high)


BUILT_INS: dict[str, RewardFunction] = {"exact": exact, "contains": contains, "json": json_valid}
PARAMETRISED = {"regex": _regex, "length": _length}


def judged(ask: Callable[[str], str], rubric: str) -> RewardFunction:
    """The ``judge`` reward: the judge's rating of the answer to the row's question (its
    ``prompt`` when it has one, else the prompt as asked); no rating is a failure."""

    def judge(prompt: str, completion: str, row: dict) -> float:
        question = row["prompt"] if isinstance(row.get("prompt"), str) else prompt
        reference = row.get("answer")
        mine = row["rubric"] if isinstance(row.get("rubric"), str) else rubric
        score, reply = rubric_score(ask, question, reference and str(reference), completion, mine)
        if score is None:
            raise ValueError(f"the judge gave no rating: {reply[:120]!r}")
        return score

    return judge


def split_weight(spec: str) -> tuple[str, float]:
    """``NAME[:WEIGHT]``: a last ``:number`` is the weight when what precedes it is a whole
    reward (``regex:a:2`` is ``regex:a`` weighed 2; ``regex:5`` is the pattern ``5``)."""
    head, _, tail = spec.rpartition(":")
    try:
        weight = float(tail)
    except ValueError:
        return spec, 1.0
    if not head or (head in PARAMETRISED) or not math.isfinite(weight):
        return spec, 1.0
    return head, weight


def built_in(name: str) -> RewardFunction | None:
    kind, colon, argument = name.partition(":")
    if colon and kind in PARAMETRISED:
        return PARAMETRISED[kind](argument)
    return BUILT_INS.get(name)


def check_file(path: Path) -> dict[str, int]:
    """The reward functions of ``path`` by name, with their lines, read without running the
    file: RewardError naming the file, the function and the line for a file that does not
    parse or a public function whose parameters are not ``prompt, completion, row``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except OSError as exc:
        raise RewardError(f"reward file {path}: cannot be read ({exc.strerror})") from None
    except (SyntaxError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise RewardError(f"reward file {path.name}, line {line}: {exc}") from None
    found = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        arguments = node.args
        names = [a.arg for a in arguments.posonlyargs + arguments.args]
        extra = arguments.vararg or arguments.kwarg or arguments.kwonlyargs
        if names != PARAMETERS or extra:
            raise RewardError(
                f"reward file {path.name}, line {node.lineno}: {node.name}({', '.join(names)}) "
                "is not a reward",
                hint="a reward is def name(prompt: str, completion: str, row: dict) -> float "
                "(start a helper's name with _ to keep it out)",
            )
        found[node.name] = node.lineno
    if not found:
        raise RewardError(f"reward file {path.name}: no public function to use as a reward")
    return found


def _import(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"lora_studio_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever the user's file raises, said plainly
        line = _line_in(exc, path)
        raise RewardError(
            f"reward file {path.name}{line}: it does not import: {type(exc).__name__}: {exc}"
        ) from None
    return module


def _line_in(exc: BaseException, path: Path) -> str:
    """``, line N`` of the deepest frame in ``path`` (where the file went wrong)."""
    import traceback

    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f", line {lines[-1]}" if lines else ""


def check(specs: list[str] | None, files: list[str] | None, judge: bool = False) -> None:
    """Everything ``load`` checks that can be known without running the files: the specs,
    and each file's syntax and signatures (the studio checks this before any process
    starts; the worker imports the files). ``judge``: whether a judge is configured."""
    defined = {name for file in files or [] for name in check_file(Path(file))}
    for spec in specs or []:
        name, _ = split_weight(spec)
        if name == "judge" and name not in defined and not judge:
            raise _no_judge()
        if name not in defined and name != "judge" and built_in(name) is None:
            raise _unknown(spec, defined)
    if not specs and not defined:
        raise _none_given()


def load(
    specs: list[str] | None, files: list[str] | None, judge: RewardFunction | None = None
) -> list[Reward]:
    """The run's rewards: each ``--reward`` spec a built-in (``judge``: the given one) or a
    function of one of the ``files`` (all of their functions when no spec names one)."""
    functions: dict[str, Reward] = {}
    for file in files or []:
        path = Path(file)
        lines = check_file(path)
        module = _import(path)
        for name, line in lines.items():
            fn = getattr(module, name)
            if list(inspect.signature(fn).parameters) != PARAMETERS:
                raise RewardError(f"reward file {path.name}, line {line}: {name} is not a reward")
            functions[name] = Reward(name, 1.0, fn, f"{path.name}, line {line}")
    if not specs:
        if not functions:
            raise _none_given()
        return list(functions.values())
    rewards = []
    for spec in specs:
        name, weight = split_weight(spec)
        if name in functions:
            rewards.append(Reward(name, weight, functions[name].fn, functions[name].where))
        elif name == "judge":
            if judge is None:
                raise _no_judge()
            rewards.append(Reward(name, weight, judge))
        elif (fn := built_in(name)) is not None:
            rewards.append(Reward(name, weight, fn))
        else:
            raise _unknown(spec, set(functions))
    return rewards


def _unknown(spec: str, defined: set[str]) -> RewardError:
    known = ", ".join([*BUILT_INS, "regex:PATTERN", "length:MIN-MAX", "judge", *sorted(defined)])
    return RewardError(f"--reward {spec}: no such reward", hint=f"choose among: {known}")


def _no_judge() -> RewardError:
    return RewardError(
        "--reward judge needs a judge",
        hint="give --judge-url (an OpenAI-compatible …/v1) and --judge-model",
    )


def _none_given() -> RewardError:
    return RewardError(
        "GRPO needs at least one reward",
        hint="add --reward exact (or contains, regex:PATTERN, length:MIN-MAX, json), "
        "or --reward-file rewards.py",
    )


def scorer_for(params) -> Scorer:
    """A run's scorer (``TrainingParams``): its rewards loaded, the judge's endpoint
    connected when ``judge`` is among them."""
    judge = None
    if params.judge_url and params.judge_model:
        endpoint = EndpointJudge(params.judge_url, params.judge_model, params.judge_key_env)
        judge = judged(endpoint, read_rubric(params.rubric))
    return Scorer(load(params.reward, params.reward_file, judge))


@dataclass
class Scorer:
    """Scores answers with the run's rewards; counts the failures instead of stopping."""

    rewards: list[Reward]
    failures: Counter = field(default_factory=Counter)
    first_failure: dict[str, str] = field(default_factory=dict)

    def score(self, prompt: str, completion: str, row: dict) -> tuple[float, list[float]]:
        """(the weighted sum, each reward's own value) for one answer."""
        values = [self._one(reward, prompt, completion, row) for reward in self.rewards]
        return sum(r.weight * v for r, v in zip(self.rewards, values, strict=True)), values

    def total(self, prompt: str, completion: str, row: dict) -> float:
        """The weighted sum alone."""
        return self.score(prompt, completion, row)[0]

    def _one(self, reward: Reward, prompt: str, completion: str, row: dict) -> float:
        try:
            value = reward.fn(prompt, completion, row)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"returned {type(value).__name__} {value!r}, not a number")
            if not math.isfinite(value):
                raise ValueError(f"returned {value}")
            return float(value)
        except Exception as exc:  # noqa: BLE001 - one answer's failure must not end a run
            self.failures[reward.name] += 1
            self.first_failure.setdefault(
                reward.name, f"{reward.name} ({reward.where}): {type(exc).__name__}: {exc}"
            )
            return 0.0
