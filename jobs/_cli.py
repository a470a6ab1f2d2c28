"""What every job shares: command line -> validated config, Ray start-up, and clean user errors."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from sa_ray.config import Config, ConfigError, load_config

DEFAULT_CONFIG = "configs/tiny.yaml"


def parse(argv: list[str] | None, description: str) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=description, epilog="Overrides: dotted.key=value, e.g. "
                                 "codec.n_codebooks=8 corpus.max_utterances=200")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    ap.add_argument("--run-id", default=None, help="MLflow run id to resume")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = ap.parse_args(argv)
    return load_config(args.config, args.overrides), args


def prepared(run_dir: Path) -> dict:
    """The summary of <run_dir>/data, which every job after `prepare` starts from."""
    from sa_ray.data.prepare import read_summary

    summary = read_summary(run_dir / "data")
    if summary is None:
        raise FileNotFoundError(f"no prepared data in {run_dir / 'data'}: run `python -m jobs.prepare` first")
    return summary


def base_model(cfg: Config, given: str | None = None, how: str = "set align.base_model") -> Path:
    """The base model a job builds on: `given`, else align.base_model, else <run_dir>/pretrain/model."""
    base_dir = Path(given or cfg.align.base_model or Path(cfg.run_dir) / "pretrain" / "model").resolve()
    if not (base_dir / "ar" / "vocab.json").is_file():
        raise FileNotFoundError(f"no base model in {base_dir}: run `python -m jobs.pretrain` or {how}")
    return base_dir


def init_ray(cfg: Config) -> None:
    """Joins the cluster a job was submitted to (RAY_ADDRESS), the configured one, or starts a local one."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        start_local_ray(num_cpus=cfg.ray.num_cpus, log_to_driver=True)


def start_local_ray(num_cpus: int | None = None, env: dict[str, str] | None = None, **init) -> None:
    """A local Ray instance whose State API answers for it, and only for it.

    Ray Train's placement-group cleaner asks the State API every second whether the run's controller lives.
    Without a dashboard there is no State API (a warning a second in the job's log), and a worker left to find
    one takes the machine's newest Ray instance: if that is another one with a dashboard (a `ray start --head`,
    a second job), the controller is "not found" there and the cleaner removes the run's placement group,
    killing it (seen here: a pretrain run killed by a second `ray.init` on the machine). So the dashboard
    runs on a port picked here and every worker of this instance is told, by RAY_API_SERVER_ADDRESS, where it is.
    """
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**(env or {}), "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             runtime_env={"env_vars": env}, **init)


def _user_error(exc: BaseException) -> str | None:
    """The message of a foreseeable mistake, also when Ray wrapped it on its way from a worker."""
    from sa_ray.corpus.voices import VoiceError
    from sa_ray.data.validate import BadInputError
    from sa_ray.synthesis import TextError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConfigError, BadInputError, VoiceError, TextError, FileNotFoundError)):
            return str(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    try:
        main(argv)
    except Exception as exc:  # noqa: BLE001 - anything unforeseen keeps its traceback
        message = _user_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
