"""Who answers: a model of this studio through its engine (batched, one base in memory), or an
OpenAI-compatible endpoint (Ollama, LM Studio, vLLM, another ``lora-studio serve``)."""

from __future__ import annotations

from dataclasses import dataclass

from core.eval.cases import Case
from core.eval.generation import Sampling, answer
from core.judge import EndpointJudge
from core.serve.engine import InferenceEngine


@dataclass(frozen=True)
class Asking:
    """How a teacher answers: sampled at ``temperature`` (seeded), at most ``max_tokens``."""

    temperature: float = 0.8
    max_tokens: int = 256
    seed: int = 0


class StudioTeacher:
    """A model of the studio (a base or ``lora/<id>``), answering a batch at a time."""

    def __init__(self, engine: InferenceEngine, model_id: str, batch_size: int = 8):
        engine.registry.get(model_id)  # an unknown id is refused here, naming it
        self.engine, self.model_id, self.batch_size = engine, model_id, batch_size

    def answers(self, conversations: list[list[dict]], how: Asking) -> list[str]:
        cases = [Case(n, messages, None) for n, messages in enumerate(conversations, 1)]
        sampling = Sampling(
            max_tokens=how.max_tokens,
            temperature=how.temperature,
            seed=how.seed,
            batch_size=self.batch_size,
        )
        made = answer(self.engine, self.model_id, cases, sampling, with_loss=False)
        return [m.text.strip() for m in made]

    def describe(self) -> str:
        return f"{self.model_id} (this studio)"


class EndpointTeacher:
    """An OpenAI-compatible ``/chat/completions``, one conversation at a time; an error says
    its status, never the endpoint's body (core.judge's client)."""

    def __init__(self, url: str, model: str, key_env: str | None = None):
        self.client = EndpointJudge(url, model, key_env, timeout=120.0)

    def answers(self, conversations: list[list[dict]], how: Asking) -> list[str]:
        reply = self.client.complete
        return [reply(c, how.temperature, how.max_tokens).strip() for c in conversations]

    def describe(self) -> str:
        return self.client.describe()
