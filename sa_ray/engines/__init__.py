"""Inference engines behind the project's sampling interface (vLLM lives in `vllm_engine`, imported lazily)."""
