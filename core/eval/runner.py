"""An evaluation, start to end: every row answered by every model, scored against its
reference, judged, saved as it finishes; then the summary.

Rows go in chunks: each model answers the chunk (one engine call, batched), the chunk is
scored and judged, and its rows are appended to ``rows.jsonl``. So a stop (or a judge that
stops answering) loses at most the chunk under way, and a resumed evaluation starts at the
first row not saved.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import judge as judging
from core.adapters.layout import TEST_FILE
from core.adapters.store import AdapterMetadata
from core.data.leaks import file_rows, find_leaks
from core.errors import StudioError
from core.eval.cases import Case, fingerprint, read_cases
from core.eval.generation import Answer, Sampling, answer, perplexity
from core.eval.metrics import (
    METRICS,
    MODEL_METRICS,
    TOOL_METRICS,
    bootstrap,
    reference_scores,
    tool_call,
)
from core.eval.store import EvalSpec, EvalStore
from core.serve.engine import GenerationParams, InferenceEngine
from core.train.reporters import MLRUNS, report_scores

log = logging.getLogger(__name__)


@dataclass
class Judge:
    """How the judge is asked (``ask(prompt) -> reply``) and what it is asked for."""

    ask: Callable[[str], str]
    description: str
    rubric: str = judging.RUBRIC


def studio_judge(engine: InferenceEngine, model_id: str) -> Callable[[str], str]:
    """A model of this studio as the judge: greedy, through the engine."""
    params = GenerationParams(temperature=0.0, max_tokens=384)

    def ask(prompt: str) -> str:
        return engine.chat(model_id, [{"role": "user", "content": prompt}], params)[0]

    return ask


@dataclass
class Evaluation:
    """One evaluation being run (or resumed)."""

    store: EvalStore
    engine: InferenceEngine
    spec: EvalSpec
    cases: list[Case]
    judge: Judge | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[int, int], None] = lambda done, total: None

    def run(self) -> EvalSpec:
        """Answer, score and judge the rows not saved yet; then summarize. A StudioError
        (a judge that refuses, a model that fails) stops it, any other error fails it, with
        the rows done kept either way. Refused (a StudioError) while another process runs
        the same evaluation."""
        with self.store.running(self.spec.id):
            try:
                return self._run()
            except StudioError as exc:
                return self._end("stopped", exc.message)
            except Exception as exc:  # noqa: BLE001 - whatever it was, the rows done stay
                log.exception("evaluation %s failed", self.spec.id)
                return self._end("failed", f"{type(exc).__name__}: {exc}")

    def stopping(self) -> bool:
        """Stop asked here (``stop``) or from another process (the store's stop file)."""
        return self.stop.is_set() or self.store.stop_requested(self.spec.id)

    def _run(self) -> EvalSpec:
        spec, sampling = self.spec, Sampling(**self.spec.sampling)
        done = len(self.store.rows(spec.id))
        chunk = max(1, sampling.batch_size)
        spec.state, spec.error = "running", None
        self.store.save(spec)
        for start in range(done, len(self.cases), chunk):
            if self.stopping():
                return self._end("stopped", None)
            cases = self.cases[start : start + chunk]
            self.store.append(spec.id, self._rows(cases, sampling))
            spec.rows_done = start + len(cases)
            self.store.save(spec)
            self.progress(spec.rows_done, len(self.cases))
        spec.summary = summarize(spec, self.store.rows(spec.id))
        return self._end("complete", None)

    def _end(self, state: str, error: str | None) -> EvalSpec:
        self.spec.state, self.spec.error = state, error
        self.spec.rows_done = len(self.store.rows(self.spec.id))
        self.store.save(self.spec)
        return self.spec

    def _rows(self, cases: list[Case], sampling: Sampling) -> list[dict]:
        with_loss = bool(set(MODEL_METRICS) & set(self.spec.metrics))
        with_text = bool(set(self.spec.metrics) - set(MODEL_METRICS)) or self.judge is not None
        answers = {
            model: answer(self.engine, model, cases, sampling, with_loss, with_text)
            for model in self.spec.models
        }
        rows = []
        for index, case in enumerate(cases):
            mine = {model: answers[model][index] for model in self.spec.models}
            rows.append(self._row(case, mine))
        return rows

    def _row(self, case: Case, answers: dict[str, Answer]) -> dict:
        metrics = tuple(self.spec.metrics)
        scores = {}
        for model, made in answers.items():
            found = reference_scores(made.text, case.reference, metrics) if case.reference else {}
            if made.reference_loss is not None and {"loss", "perplexity"} & set(metrics):
                found["loss"] = made.reference_loss  # perplexity's interval is the loss's
            if made.reference_loss is not None and "perplexity" in metrics:
                found["perplexity"] = perplexity(made.reference_loss)
            if "answer_words" in metrics:
                found["answer_words"] = float(len(made.text.split()))
            if case.calls is not None and "tool_call" in metrics:
                found["tool_call"] = tool_call(made.text, case.calls)
            scores[model] = found
        row = {
            "line": case.line,
            "messages": case.messages,
            "prompt": case.prompt,
            "reference": case.reference,
            "answers": {model: made.text for model, made in answers.items()},
            "tokens": {model: made.tokens for model, made in answers.items()},
            "scores": scores,
        }
        if self.judge is not None:
            row["judge"] = self._judged(case, row["answers"])
        return row

    def _judged(self, case: Case, texts: dict[str, str]) -> dict:
        judge, models = self.judge, self.spec.models
        found: dict = {"pairwise": {}, "scores": {}}
        for model in models[1:]:
            verdict = judging.pairwise(
                judge.ask, case.prompt, case.reference, texts[models[0]], texts[model]
            )
            found["pairwise"][model] = asdict(verdict)
        for model in models:
            score, reply = judging.rubric_score(
                judge.ask, case.prompt, case.reference, texts[model], judge.rubric
            )
            found["scores"][model] = {"score": score, "reply": reply}
        return found


def summarize(spec: EvalSpec, rows: list[dict]) -> dict:
    """The result object: per model and metric, the mean and its 95% bootstrap interval;
    the judge's counts. (``lora-studio eval --json`` prints it.)"""
    metrics = {
        model: _model_metrics(spec, [row["scores"][model] for row in rows]) for model in spec.models
    }
    summary = {
        "models": spec.models,
        "rows": len(rows),
        "rows_with_reference": sum(row["reference"] is not None for row in rows),
        "metrics": metrics,
        "judge": _judge_summary(spec, rows) if any("judge" in row for row in rows) else None,
    }
    if spec.leaks is not None:  # how many rows copy training rows, and whether they count
        summary["leaked"] = {
            "rows": len(spec.leaks["pairs"]),
            "excluded": spec.leaks["excluded"],
            "training": spec.leaks["training"],
            "pairs": spec.leaks["pairs"],
        }
    return summary


def _model_metrics(spec: EvalSpec, scores: list[dict]) -> dict:
    found = {}
    for name in spec.metrics:
        if name == "perplexity":
            continue  # from the loss's interval below
        values = [s[name] for s in scores if s.get(name) is not None]
        if values:
            found[name] = bootstrap(values)
    losses = [s["loss"] for s in scores if s.get("loss") is not None]
    if "perplexity" in spec.metrics and losses:
        loss = found.get("loss") or bootstrap(losses)  # asked for perplexity alone too
        found["perplexity"] = {k: perplexity(loss[k]) for k in ("mean", "low", "high")}
        found["perplexity"]["n"] = loss["n"]
    return found


def _judge_summary(spec: EvalSpec, rows: list[dict]) -> dict:
    judged = [row["judge"] for row in rows if "judge" in row]
    pairwise = {}
    for model in spec.models[1:]:
        outcomes = [j["pairwise"][model]["outcome"] for j in judged if model in j["pairwise"]]
        counts = {k: outcomes.count(k) for k in ("win", "tie", "loss", "unparseable")}
        pairwise[model] = counts | {"against": spec.models[0]}
    scores = {}
    for model in spec.models:
        given = [j["scores"][model]["score"] for j in judged if model in j["scores"]]
        parsed = [s for s in given if s is not None]
        scores[model] = bootstrap(parsed) | {"unparseable": len(given) - len(parsed)}
    return {**(spec.judge or {}), "pairwise": pairwise, "scores": scores}


def prepare(
    store: EvalStore,
    engine: InferenceEngine,
    models: list[str],
    data: str,
    *,
    metrics: tuple[str, ...],
    sampling: Sampling,
    judge: dict | None = None,
    data_name: str | None = None,
    leaks: dict | None = None,
) -> Evaluation:
    """A new evaluation, checked before anything runs: every model known and usable, every
    row of the test file readable, the judge reachable in principle (its key set).
    ``data_name``: the test file's name for people (an upload is stored by its hash);
    ``leaks``: its rows that copy training rows (``leaks_against``), left out if excluded."""
    if not models:
        raise StudioError("name at least one model to evaluate")
    if len(set(models)) != len(models):
        raise StudioError("a model is named twice", hint="name each model once")
    for model in models:
        engine.registry.get(model)  # an unknown id is refused here, naming it
    cases = _kept(read_cases(data), leaks)
    asker = judge_for(engine, judge)
    spec = store.create(
        models=models,
        data=str(data),
        data_name=data_name or Path(data).name,
        fingerprint=fingerprint(data),
        metrics=list(metrics),
        sampling=asdict(sampling),
        judge=judge,
        rows_total=len(cases),
        leaks=leaks,
    )
    return Evaluation(store, engine, spec, cases, asker)


def leaks_against(data: str, training: Path, exclude: bool) -> dict:
    """The test file's rows that near-duplicate a row of ``training`` (a .jsonl, or a
    dataset folder's train.jsonl), with both lines (``core.data.leaks``)."""
    if not training.exists():
        raise StudioError(f"no training data at {training}", hint="give --train-data FILE")
    held_out = [(case.line, _case_text(case)) for case in read_cases(data)]
    found = find_leaks(held_out, file_rows(training))
    pairs = [[leak.held_out_line, leak.training_line, leak.similarity] for leak in found]
    return {"training": str(training), "pairs": pairs, "excluded": exclude}


def _case_text(case: Case) -> str:
    asked = " ".join(str(m.get("content") or "") for m in case.messages)
    return f"{asked} {case.reference or ''}"


def _kept(cases: list[Case], leaks: dict | None) -> list[Case]:
    """The cases to answer: all, or those that leak left out when asked."""
    if not leaks or not leaks.get("excluded"):
        return cases
    leaked = {pair[0] for pair in leaks["pairs"]}
    return [case for case in cases if case.line not in leaked]


def resume(store: EvalStore, engine: InferenceEngine, eval_id: str) -> Evaluation:
    """A stopped evaluation, to continue from its first row not saved (the test file must
    be the same)."""
    spec = store.get(eval_id)
    if spec.state == "complete":
        raise StudioError(f"evaluation {eval_id} is complete", hint="start a new one")
    if store.is_running(eval_id):
        raise StudioError(
            f"evaluation {eval_id} is running already",
            hint="wait for it, or stop it first (the page's Stop, lora-studio eval --stop ID)",
        )
    if fingerprint(spec.data) != spec.fingerprint:
        raise StudioError(
            f"{spec.data} has changed since evaluation {eval_id} started",
            hint="start a new evaluation on it",
        )
    cases = _kept(read_cases(spec.data), spec.leaks)
    return Evaluation(store, engine, spec, cases, judge_for(engine, spec.judge))


def judge_for(engine: InferenceEngine, config: dict | None) -> Judge | None:
    """The judge a spec describes: ``{"kind": "url", "url", "model", "key_env"?}`` or
    ``{"kind": "studio", "model"}``, with ``"rubric"`` (its text) optional."""
    if not config:
        return None
    rubric = config.get("rubric") or judging.RUBRIC
    if config["kind"] == "url":
        ask = judging.EndpointJudge(config["url"], config["model"], config.get("key_env"))
        return Judge(ask, ask.describe(), rubric)
    engine.registry.get(config["model"])
    return Judge(studio_judge(engine, config["model"]), config["model"], rubric)


def _trained_from(engine: InferenceEngine, entry) -> str | None:
    """The base a published adapter or model was trained from (an adapter's own base, a
    full fine-tuning run's from its record) when the studio lists it; a base trained from a
    folder outside the studio is not, and the adapter or model is then evaluated alone."""
    base = entry.base_id or AdapterMetadata.read(Path(entry.path)).baseModelId
    try:
        return engine.registry.get(base).id
    except StudioError:
        log.info("%s's base %s is not in the studio: evaluated alone", entry.id, base)
        return None


def evaluate_published(
    store: EvalStore, engine: InferenceEngine, model_id: str, sampling: Sampling | None = None
) -> EvalSpec | None:
    """The evaluation of a just-published adapter (``lora/<id>``), or a full fine-tuning
    run's new model, on the test rows it was trained with (its ``test.jsonl``), against the
    base it was trained from; the summary also goes into its metadata.json
    (``testEvaluation``). None when the run kept no test rows."""
    engine.registry.reload()
    entry = engine.registry.get(model_id)
    test = Path(entry.path) / TEST_FILE
    if not test.is_file():
        return None
    models = [m for m in (_trained_from(engine, entry), entry.id) if m]
    sampling = sampling or Sampling()
    metrics = METRICS + TOOL_METRICS
    spec = prepare(store, engine, models, str(test), metrics=metrics, sampling=sampling).run()
    if spec.state == "complete":
        means = {
            model: {name: round(stat["mean"], 4) for name, stat in found.items()}
            for model, found in spec.summary["metrics"].items()
        }
        meta = AdapterMetadata.read(Path(entry.path))
        update = {"id": spec.id, "rows": spec.summary["rows"], "metrics": means}
        AdapterMetadata(**{**meta.model_dump(), "testEvaluation": update}).write(Path(entry.path))
        mlruns = engine.registry.settings.home / MLRUNS
        base = means.get(models[0], {}) if len(models) > 1 else {}
        scores = means[entry.id] | {f"base/{k}": v for k, v in base.items()}
        report_scores(Path(entry.path), meta.trainingSteps or 0, scores, mlruns, log.warning)
    return spec
