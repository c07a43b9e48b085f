"""Export every format and load it back: PEFT (deltas and a round trip), fused GGUF (imported
back, same greedy output), Ollama (the Modelfile parses), GGUF LoRA adapter (read back)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import generate, load
from safetensors.numpy import load_file

from core.adapters import ollama
from core.adapters.export import export_adapter, import_any
from core.adapters.store import AdapterStore
from core.errors import StudioError
from core.models.gguf_arch import permute
from core.models.gguf_import import import_gguf
from core.models.inspect import inspect_model
from tests.helpers import small_filesystem

PROMPTS = ["What colour is the sky number 7?", "Tell me a story", "hello there"]


@pytest.fixture
def setup(studio, toy_model, trained_adapter):
    """A studio with the toy base and the session's trained adapter."""
    shutil.copytree(toy_model, studio.models / "toy")
    shutil.copytree(trained_adapter, studio.adapters / trained_adapter.name)
    return AdapterStore(studio.adapters), trained_adapter.name, inspect_model(studio.models / "toy")


def replies(model_path, adapter_path=None, max_tokens=24) -> list[str]:
    model, tokenizer = load(str(model_path), adapter_path=adapter_path and str(adapter_path))
    out = []
    for question in PROMPTS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True
        )
        out.append(generate(model, tokenizer, prompt=prompt, max_tokens=max_tokens))
    return out


def logits(model_path) -> list[np.ndarray]:
    """The next-token logits after each of PROMPTS."""
    model, tokenizer = load(str(model_path))
    out = []
    for question in PROMPTS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True
        )
        out.append(np.array(model(mx.array([prompt]))[0, -1]))
    return out


def mlx_deltas(folder) -> dict[str, np.ndarray]:
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_parameters"]["scale"]
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}
    return {
        name[: -len(".lora_a")]: scale * (weights[name] @ weights[name[:-1] + "b"]).T
        for name in weights
        if name.endswith(".lora_a")
    }


def test_peft_export_has_peft_layout_and_the_same_deltas(setup, tmp_path):
    store, adapter_id, base = setup
    out = export_adapter(store, adapter_id, base, "peft", tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"]) == ("LORA", "CAUSAL_LM")
    assert config["layers_to_transform"] == [0, 1, 2, 3]
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "toy"
    tensors = load_file(str(out / "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    expected = mlx_deltas(store.path(adapter_id))
    assert len(expected) == 16
    for stem, delta in expected.items():
        a = tensors[f"base_model.model.{stem}.lora_A.weight"]
        b = tensors[f"base_model.model.{stem}.lora_B.weight"]
        assert a.shape == (config["r"], delta.shape[1]) and b.shape == (delta.shape[0], config["r"])
        np.testing.assert_allclose(scale * b @ a, delta, rtol=1e-5, atol=1e-6, err_msg=stem)


def test_peft_round_trip_gives_the_same_greedy_output(setup, tmp_path):
    store, adapter_id, base = setup
    out = export_adapter(store, adapter_id, base, "peft", tmp_path / "peft")
    zipped = Path(shutil.make_archive(str(tmp_path / "peft-zip"), "zip", out))
    for source in (out, zipped):
        new_id = import_any(source, store, base, name="from PEFT")
        assert store.read(new_id).metadata.importedFrom == "peft"
        assert replies(base.path, store.path(new_id)) == replies(
            base.path, store.path(adapter_id)
        ), source


def test_fused_gguf_imports_back_with_the_same_greedy_output(setup, tmp_path):
    store, adapter_id, base = setup
    fused = store.fuse(adapter_id, base, tmp_path / "fused", "reference")
    expected = replies(fused)
    for kind in ("f32", "f16", "q8_0"):
        gguf = export_adapter(
            store, adapter_id, base, "gguf", tmp_path / f"m-{kind}.gguf", kind=kind
        )
        back = import_gguf(gguf, tmp_path / "back", kind)
        if kind == "q8_0":
            # quantized: the random toy's near-ties may flip a greedy token, so compare what
            # the model computes: the next-token logits after each prompt
            for ours, reference in zip(logits(back), logits(fused), strict=True):
                error = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
                assert error < 0.02, (kind, error)
            continue
        for text, reference in zip(replies(back), expected, strict=True):
            # f32 and f16: the same, or apart only in the last token
            assert text == reference or text.split()[:-1] == reference.split()[:-1], kind


# Ollama's documented Modelfile grammar (docs/modelfile.md), written here apart from the
# studio's writer: `INSTRUCTION arguments` per line, `#` comments, a value in triple quotes may
# span lines and ends at the first closing triple quote (no escapes), which ends its line
_MODELFILE_LINE = re.compile(
    r'[ \t]*(?:#[^\n]*|(\w+)[ \t]+(?:"""((?:(?!""").)*)"""|([^\n]*)))?[ \t]*(?:\n|\Z)', re.S
)


def read_modelfile(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    position = 0
    while position < len(text):
        line = _MODELFILE_LINE.match(text, position)
        assert line and line.end() > position, f"not a Modelfile: {text[position:][:60]!r}"
        verb, triple, plain = line.groups()
        if verb:
            found.setdefault(verb.upper(), []).append(triple if triple is not None else plain)
        position = line.end()
    return found


def test_ollama_folder_and_a_modelfile_that_parses(setup, tmp_path):
    store, adapter_id, base = setup
    folder = export_adapter(
        store, adapter_id, base, "ollama", tmp_path / "ollama", kind="q8_0", system="Be brief."
    )
    modelfile = read_modelfile((folder / "Modelfile").read_text())
    assert modelfile["FROM"] == ["./model.gguf"] and (folder / "model.gguf").stat().st_size > 0
    assert modelfile["SYSTEM"] == ["Be brief."] and 'stop "</s>"' in modelfile["PARAMETER"]


@pytest.mark.parametrize(
    "system",
    ['Say "hi" politely.', "Two lines:\nC:\\path and a \\n that is not a newline.", "Ünïcode ✓"],
)
def test_a_system_prompt_reads_back_from_the_modelfile_as_written(tmp_path, system):
    folder = tmp_path / "m"
    folder.mkdir()
    ollama.write_modelfile(folder, None, (None, "</s>"), system)
    assert read_modelfile((folder / "Modelfile").read_text())["SYSTEM"] == [system]


@pytest.mark.parametrize("system", ['Use """triple""" quotes.', 'Answer "yes"', '"Quoted" start'])
def test_a_system_prompt_a_modelfile_cannot_hold_is_refused_before_any_work(
    setup, tmp_path, system
):
    store, adapter_id, base = setup
    with pytest.raises(StudioError, match="cannot go into a Modelfile"):
        export_adapter(store, adapter_id, base, "ollama", tmp_path / "o", system=system)
    assert not (tmp_path / "o").exists()


def test_an_ollama_template_is_chosen_by_rendering_as_the_models_own_template():
    """A template that only looks like ChatML (no newline after the role) gets no TEMPLATE:
    the Modelfile's template must write the prompt the model's own template writes."""
    from jinja2 import Environment

    def renderer(text):
        template = Environment(keep_trailing_newline=True).from_string(text)
        return lambda messages: template.render(messages=messages)

    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}<|im_start|>assistant\n"
    )
    template, stops = ollama.ollama_template(renderer(chatml), None, "<|im_end|>")
    assert template == ollama.FORMATS[0].template and "<|im_end|>" in stops
    rendered = ollama.Modelfile("./model.gguf", template, "sys", stops).render()
    again = read_modelfile(rendered)
    assert again["TEMPLATE"] == [template] and again["SYSTEM"] == ["sys"]
    assert again["PARAMETER"] == [f'stop "{stop}"' for stop in stops]
    lookalike = chatml.replace("{{ m.role }}\n", "{{ m.role }} ")
    assert ollama.ollama_template(renderer(lookalike), None, "</s>") == (None, ["</s>"])


def test_go_templates_render_as_go_renders_them():
    """The renderer the Ollama check rests on, on what Go's text/template does: trims,
    else-if chains, variables set in a range, Ollama's collated messages."""
    from core.adapters.go_template import ollama_values, render

    assert render("a  {{- .X -}}  b", {"X": 1}) == "a1b"
    chain = "{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}"
    assert [render(chain, v) for v in ({"A": 1}, {"B": "x"}, {})] == ["a", "b", "c"]
    counted = "{{ $n := true }}{{ range .Messages }}{{ if $n }}first {{ end }}{{ $n = false }}"
    counted += "{{ .Role }};{{ end }}"
    values = ollama_values(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u1"},
            {"role": "user", "content": "u2"},
        ]
    )
    assert values["Messages"][1] == {"Role": "user", "Content": "u1\n\nu2"}
    assert render(counted, values) == "first system;user;"
    assert render('{{ if and (eq .R "a") (not .S) }}y{{ end }}', {"R": "a"}) == "y"
    with pytest.raises(ValueError, match="slice"):
        render("{{ slice .Messages 1 }}", values)
    with pytest.raises(ValueError, match="ends before"):
        render("{{ if .A }}open", {})


def test_gguf_lora_adapter_reads_back_as_the_same_deltas(setup, tmp_path):
    from gguf import GGUFReader

    store, adapter_id, base = setup
    path = export_adapter(store, adapter_id, base, "gguf-adapter", tmp_path / "lora.gguf")
    reader = GGUFReader(str(path))
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    alpha = float(fields["adapter.lora.alpha"].parts[-1][0])
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    config = json.loads((store.path(adapter_id) / "adapter_config.json").read_text())
    rank = config["lora_parameters"]["rank"]
    heads = {"q_proj": 4, "k_proj": 2}
    for stem, delta in mlx_deltas(store.path(adapter_id)).items():
        layer, module = stem.split(".")[2], stem.split(".")[-1]
        gguf_stem = f"blk.{layer}.attn_{ {'o_proj': 'output'}.get(module, module[0]) }.weight"
        a, b = tensors[f"{gguf_stem}.lora_a"], tensors[f"{gguf_stem}.lora_b"]
        expected = permute(delta, heads[module]) if module in heads else delta
        np.testing.assert_allclose(alpha / rank * b @ a, expected, rtol=1e-5, atol=1e-6)


def test_exports_refuse_before_any_work(setup, tmp_path):
    store, adapter_id, base = setup
    other = shutil.copytree(base.path, tmp_path / "olmo-like")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "olmo2"}))
    with pytest.raises(StudioError, match="supports the llama, mistral, .* families, not 'olmo2'"):
        export_adapter(store, adapter_id, inspect_model(other), "gguf", tmp_path / "out" / "x.gguf")
    config = store.path(adapter_id) / "adapter_config.json"
    lora = json.loads(config.read_text())
    config.write_text(json.dumps({**lora, "fine_tune_type": "dora"}))  # but no magnitudes
    with pytest.raises(StudioError, match="DoRA adapter has no magnitude for"):
        export_adapter(store, adapter_id, base, "peft", tmp_path / "out" / "peft")
    config.write_text(json.dumps({**lora, "fine_tune_type": "full"}))
    with pytest.raises(StudioError, match="full adapter has no PEFT LoRA layout"):
        export_adapter(store, adapter_id, base, "peft", tmp_path / "out" / "peft")
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_fused_export_that_cannot_fit_the_disk_is_refused_first(setup, tmp_path):
    store, adapter_id, base = setup
    with small_filesystem(tmp_path / "small", "64k") as folder:
        with pytest.raises(StudioError, match="not enough disk space"):
            export_adapter(store, adapter_id, base, "gguf", folder / "m.gguf", kind="f32")
        assert list(folder.iterdir()) == []


def test_export_and_import_from_the_command_line(setup, studio, tmp_path):
    _, adapter_id, _ = setup
    env = {**os.environ, "LORA_STUDIO_HOME": str(studio.home)}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "webapp", *args], env=env, capture_output=True, text=True
        )

    out = tmp_path / "peft"
    exported = cli("export", f"lora/{adapter_id}", "--format", "peft", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    imported = cli("import", str(out), "--base", "toy", "--name", "Back from PEFT")
    assert imported.returncode == 0 and "imported as lora/" in imported.stdout
    refused = cli("import", str(out), "--name", "no base")
    assert refused.returncode == 2 and "needs its base model" in refused.stderr


def test_exports_name_the_base_by_its_hub_id_and_keep_the_training_system_prompt(
    studio, toy_model, tmp_path
):
    """A base fetched from the hub knows its repo (PEFT's base_model_name_or_path), and an
    adapter whose every training row had one system prompt gets it in its Modelfile."""
    from core.models.inspect import record_hub_id
    from core.params import TrainingParams
    from core.train.service import TrainingService
    from tests.helpers import colour_rows, write_jsonl

    base_folder = studio.models / "toy"
    shutil.copytree(toy_model, base_folder)
    record_hub_id(base_folder, "someone/toy-llama")
    rows = [
        {"messages": [{"role": "system", "content": "Talk like a pirate."}, *row["messages"]]}
        for row in colour_rows(16)
    ]
    data = write_jsonl(tmp_path / "pirate.jsonl", rows)
    params = TrainingParams(epochs=1, lora_layers=-1, batch_size=4)
    run = TrainingService(studio).start(base_folder, data, params)
    final = run.wait(timeout=120)
    assert final.type == "complete", final
    store, base = AdapterStore(studio.adapters), inspect_model(base_folder)
    assert base.hub_id == "someone/toy-llama"
    assert (
        store.read(final.adapter_id).metadata.model_extra["systemPrompt"] == "Talk like a pirate."
    )
    peft = export_adapter(store, final.adapter_id, base, "peft", tmp_path / "peft")
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "someone/toy-llama"
    folder = export_adapter(store, final.adapter_id, base, "ollama", tmp_path / "o", kind="q8_0")
    assert read_modelfile((folder / "Modelfile").read_text())["SYSTEM"] == ["Talk like a pirate."]
