"""One-time external check of the GGUF export: llama.cpp itself (through llama-cpp-python)
loads the exported file and answers like the studio's fused MLX model.

Not part of the test suite: llama-cpp-python compiles llama.cpp when installed (minutes on
2 cores). Run it from a venv that has it, with this project importable:

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python
    PYTHONPATH=. /tmp/llvenv/bin/python bench/llama_cpp_check.py --gguf FILE.gguf \\
        --fused FUSED_MLX_MODEL_FOLDER [--tokens 24]
    PYTHONPATH=. /tmp/llvenv/bin/python bench/llama_cpp_check.py --family qwen2 [--work DIR]

``--family F`` makes a tiny random model of family F with a trained adapter
(``bench/family_gguf.py``, in the project's venv) and checks both GGUF exports: the fused
model's GGUF against the fused MLX model, and the base's GGUF with the GGUF LoRA adapter
(llama.cpp's ``--lora``) against MLX's base with the adapter, greedy tokens compared.

The fused MLX model's greedy replies come from this project's interpreter (``--mlx-python``,
default .venv/bin/python), so the two runtimes never share a process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

PROMPTS = [
    "What is the capital of Sweden?",
    "What colour is a strawberry?",
    "Who wrote Hamlet?",
    "Is Zürich near Genève? ✓",  # letters the toy vocabularies lack: byte tokens, byte fallback
]

MLX_REPLIES = """
import json, sys
import numpy as np
import mlx.core as mx
from mlx_lm import load, stream_generate
model, tokenizer = load(sys.argv[1], adapter_path=sys.argv[4] if len(sys.argv) > 4 else None)
out = []
for question in json.loads(sys.argv[2]):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    logits = np.array(model(mx.array([ids]))[0, -1].astype(mx.float32)).tolist()
    steps = list(stream_generate(model, tokenizer, prompt=ids, max_tokens=int(sys.argv[3])))
    reply = [step.token for step in steps if step.token not in tokenizer.eos_token_ids]
    out.append([prompt, tokenizer.decode(reply), ids, logits, reply])
print(json.dumps(out))
"""


def mlx_replies(mlx_python: str, model: str, tokens: int, adapter: str | None = None):
    """[prompt, greedy reply] per question, from MLX in the project's interpreter."""
    argv = [mlx_python, "-c", MLX_REPLIES, model, json.dumps(PROMPTS), str(tokens)]
    done = subprocess.run(argv + ([adapter] if adapter else []), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout)


def compare(name: str, llm, studio: list, tokens: int) -> int:
    """How many of llama.cpp's greedy replies are MLX's token for token (each printed),
    after the prompt's tokens (same ids) and its next-token logits (relative difference)
    are compared: a random tiny model's logits are nearly flat, so greedy replies part at
    near-ties while the logits say whether the two compute the same model. Token ids, not
    text: llama.cpp leaves control tokens (``<unk>``) out of its text, MLX writes them."""
    import numpy as np

    same = 0
    for question, (prompt, expected, ids, logits, reply) in zip(PROMPTS, studio, strict=True):
        ours = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ours)
        theirs = np.array(llm.scores[len(ours) - 1][: len(logits)])
        difference = np.abs(theirs - logits).max() / max(np.abs(logits).max(), 1e-9)
        got = []
        for token in llm.generate(ours, top_k=1, temp=0.0, reset=True):
            if llm.token_eos() == token or len(got) == tokens:
                break
            got.append(token)
        same += got == reply
        print(
            f"[{name}] Q: {question}\n  same prompt tokens: {ours == ids}; next-token logits, "
            f"max relative difference: {difference:.2e}\n  studio (MLX): {expected!r}\n"
            f"  llama.cpp:    {llm.detokenize(got).decode(errors='replace')!r}"
            f" (same tokens: {got == reply})"
        )
    print(f"[{name}] {same}/{len(PROMPTS)} replies identical")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf")
    parser.add_argument("--fused", help="the fused MLX model folder")
    parser.add_argument("--family", help="check a tiny model of this family (both exports)")
    parser.add_argument("--work", default="/tmp/llama-cpp-check")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--mlx-python", default=".venv/bin/python")
    args = parser.parse_args()

    from llama_cpp import Llama

    def llama(path: str, lora: str | None = None):
        return Llama(
            model_path=path, lora_path=lora, n_ctx=512, verbose=False, seed=0, logits_all=True
        )

    if not args.family:
        studio = mlx_replies(args.mlx_python, args.fused, args.tokens)
        compare("fused", llama(args.gguf), studio, args.tokens)
        return
    work = Path(args.work) / args.family
    made = subprocess.run(
        [args.mlx_python, "bench/family_gguf.py", "--family", args.family, "--out", str(work)],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        raise SystemExit(made.stderr[-3000:])
    paths = json.loads(made.stdout.strip().splitlines()[-1])
    fused = mlx_replies(args.mlx_python, paths["fused"], args.tokens)
    adapted = mlx_replies(args.mlx_python, paths["base"], args.tokens, paths["adapter"])
    total = compare(f"{args.family} fused GGUF", llama(paths["fused_gguf"]), fused, args.tokens)
    lora = llama(paths["base_gguf"], paths["lora_gguf"])
    total += compare(f"{args.family} base GGUF + GGUF LoRA", lora, adapted, args.tokens)
    print(f"{args.family}: {total}/{2 * len(PROMPTS)} replies identical")


if __name__ == "__main__":
    main()
