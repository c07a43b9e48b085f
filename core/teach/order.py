"""An order for a dataset, as the CLI and the page give it, checked and turned into a ``Making``.

Everything a person names goes through the studio's gate (``core.access``): on a shared studio
the teacher's and the judge's URLs must be loopback or the owner's hosts
(``LORA_STUDIO_TEACHER_HOSTS``, ``LORA_STUDIO_JUDGE_HOSTS``), documents and examples must be
under the dataset roots, and no variable of the owner's environment is sent anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.access import Access
from core.data.imports import check_name
from core.errors import StudioError
from core.eval.runner import studio_judge
from core.judge import RUBRIC, EndpointJudge, read_rubric
from core.serve.engine import InferenceEngine
from core.teach.making import Making
from core.teach.recipe import Recipe, Source, read_seeds
from core.teach.teacher import Asking, EndpointTeacher, StudioTeacher


@dataclass
class Order:
    name: str
    rows: int
    source: Source
    seeds_from: str = ""  # a topics file, a documents folder, an examples file
    topics: tuple[str, ...] = ()  # or topics given as they are (the page's box)
    teacher: str | None = None  # a model of the studio
    teacher_url: str | None = None
    teacher_model: str | None = None
    teacher_key_env: str | None = None
    instructions: str = ""
    shape: str = "sft"
    student: str | None = None
    judge: str | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    rubric: str | None = None
    min_score: float | None = None
    temperature: float = 0.8
    max_tokens: int = 256
    seed: int = 0


def prepare(order: Order, datasets: Path, engine: InferenceEngine, gate: Access) -> Making:
    """The order checked (StudioError naming what is wrong) and ready to run or resume."""
    name = check_name(order.name)
    folder = datasets / f".making-{name}"
    if (datasets / f"{name}.jsonl").exists() and not folder.exists():
        raise StudioError(f"a dataset named {name} exists already", hint="choose another name")
    if order.rows < 1:
        raise StudioError("--rows must be 1 or more")
    if gate.shared and (order.teacher_key_env or order.rubric):
        raise StudioError("a shared studio uses neither its owner's keys nor files for a page user")
    teacher = _teacher(order, engine, gate)
    if order.shape == "preference" and not order.student:
        raise StudioError("--shape preference needs --student MODEL: its answers are rejected")
    seeds = list(order.topics) or read_seeds(order.source, gate.path(order.seeds_from))
    recipe = Recipe(
        name=name,
        rows=order.rows,
        source=order.source,
        seeds=[s.strip() for s in seeds if s.strip()],
        instructions=order.instructions,
        shape=order.shape,
        min_score=order.min_score,
        seed=order.seed,
        origin=order.seeds_from or "topics given",
        extra={"teacher": teacher.describe(), "judge": order.judge_url or order.judge},
    )
    if not recipe.seeds:
        raise StudioError("no topics given", hint="one topic per line")
    return Making(
        recipe,
        folder,
        teacher,
        judge=_judge(order, engine, gate),
        rubric=read_rubric(order.rubric) if order.rubric else RUBRIC,
        student=StudioTeacher(engine, order.student) if order.student else None,
        asking=Asking(order.temperature, order.max_tokens, order.seed),
    )


def _teacher(order: Order, engine: InferenceEngine, gate: Access):
    if bool(order.teacher) == bool(order.teacher_url):
        raise StudioError("give one teacher: --teacher MODEL or --teacher-url URL")
    if order.teacher:
        return StudioTeacher(engine, order.teacher)
    if not order.teacher_model:
        raise StudioError("--teacher-url needs --teacher-model NAME (the model it serves)")
    url = gate.url(order.teacher_url, "teacher")
    return EndpointTeacher(url, order.teacher_model, order.teacher_key_env)


def _judge(order: Order, engine: InferenceEngine, gate: Access):
    if order.min_score is not None and not (order.judge or order.judge_url):
        raise StudioError("--min-score needs a judge: --judge MODEL or --judge-url URL")
    if order.judge_url:
        if not order.judge_model:
            raise StudioError("--judge-url needs --judge-model NAME (the model it serves)")
        return EndpointJudge(gate.url(order.judge_url, "judge"), order.judge_model)
    if order.judge:
        engine.registry.get(order.judge)
        return studio_judge(engine, order.judge)
    return None
