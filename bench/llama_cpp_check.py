"""One-time external check of the GGUF export: llama.cpp itself (through llama-cpp-python)
loads the exported file and answers like the studio's fused MLX model.

Not part of the test suite: llama-cpp-python compiles llama.cpp when installed (minutes on
2 cores). Run it from a venv that has it, with this project importable:

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python
    PYTHONPATH=. /tmp/llvenv/bin/python bench/llama_cpp_check.py --gguf FILE.gguf \\
        --fused FUSED_MLX_MODEL_FOLDER [--tokens 24]

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
]

MLX_REPLIES = """
import json, sys
from mlx_lm import load, generate
model, tokenizer = load(sys.argv[1])
out = []
for question in json.loads(sys.argv[2]):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    out.append([prompt, generate(model, tokenizer, prompt=prompt, max_tokens=int(sys.argv[3]))])
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--fused", required=True, help="the fused MLX model folder")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--mlx-python", default=".venv/bin/python")
    args = parser.parse_args()

    from llama_cpp import Llama

    done = subprocess.run(
        [args.mlx_python, "-c", MLX_REPLIES, args.fused, json.dumps(PROMPTS), str(args.tokens)],
        capture_output=True,
        text=True,
        check=True,
    )
    studio = json.loads(done.stdout)
    llm = Llama(model_path=str(Path(args.gguf)), n_ctx=512, verbose=False, seed=0)
    same = 0
    for question, (prompt, expected) in zip(PROMPTS, studio, strict=True):
        result = llm(prompt, max_tokens=args.tokens, temperature=0.0, top_k=1)
        got = result["choices"][0]["text"]
        same += got.strip() == expected.strip()
        print(f"Q: {question}\n  studio (MLX): {expected!r}\n  llama.cpp:    {got!r}")
    print(f"{same}/{len(PROMPTS)} replies identical")


if __name__ == "__main__":
    main()
