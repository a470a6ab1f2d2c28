"""What every job shares: command line -> validated config, Ray start-up, a quiet terminal, and clean user errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sa_ray.config import Config, ConfigError, describe_settings, load_config

DEFAULT_CONFIG = "configs/tiny.yaml"
VERBOSE = "SA_RAY_VERBOSE"
# Ray Train's controller looks at its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default) and waits that
# long at each step of a run's start and end: a learner stage of the tests' align jobs took 20.6 s with it, 14.0 s at
# 0.25 s (tests/test_align_job.py's grpo run, one each), for a few more RPCs a second. Every job's local Ray has it;
# a cluster's jobs get it from their runtime environment (docs/cluster.md). A value the user exported wins.
# Ray Data's Parquet reader (its "datasource v2") lists every read's files in a task and reads their footers in a pool
# of actors (32 by default), new worker processes each time, built for listings of many remote files: on one machine
# its first reader (v1) reads the footers where the read is planned (a tiny align iteration: 74 -> 66 s; its learner
# stage 21 -> 15 s). Ray Train's preemption watcher (an actor per learner run) follows the draining of cluster nodes
# that a cloud takes back: a local instance has none.
LOCAL_RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_DATA_USE_DATASOURCE_V2": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# The workers of a local instance: no weight-loading bars, no deprecation notices, vLLM's errors only (its
# warnings on CPU are about missing GPU-side optimisations).
QUIET_WORKERS = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}
# Loggers of Ray and the libraries that write to the terminal by themselves (Ray Data's execution plans and
# progress log, Train's controller, MLflow's store migrations, ...): kept in the run's log file instead.
LIBRARY_LOGGERS = (
    "ray",
    "ray.data",
    "ray.train",
    "ray.tune",
    "ray.serve",
    "vllm",
    "mlflow",
    "alembic",
    "transformers",
    "py.warnings",
)


class _PrintSettings(argparse.Action):
    """--help-config: prints every setting and exits, as --help does, before any config is read."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(describe_settings())
        parser.exit()


class _Verbose(argparse.Action):
    """--verbose: Ray's and the libraries' own logs on the terminal too (the environment carries it to every
    process of the job)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        os.environ[VERBOSE] = "1"


def add_job_options(ap: argparse.ArgumentParser) -> None:
    """--help-config and --verbose, for jobs that build their own parser (`parse` adds them)."""
    ap.add_argument(
        "--help-config",
        action=_PrintSettings,
        help="list every config setting (dotted key, type, default, meaning) and exit",
    )
    ap.add_argument(
        "--verbose",
        action=_Verbose,
        help=f"Ray's and the libraries' logs on the terminal too "
        f"(also {VERBOSE}=1); otherwise they go to <run_dir>/logs/jobs.log and Ray's session logs",
    )


def parse(argv: list[str] | None, description: str) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(
        description=description,
        epilog="Overrides: dotted.key=value, e.g. "
        "codec.n_codebooks=8 corpus.max_utterances=200; --help-config lists every key",
    )
    add_job_options(ap)
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    ap.add_argument("--run-id", default=None, help="MLflow run id to resume")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = ap.parse_args(argv)
    return load_config(args.config, args.overrides), args


def verbose() -> bool:
    return os.environ.get(VERBOSE, "0") not in ("", "0")


def init_ray(cfg: Config) -> None:
    """Joins the cluster a job was submitted to (RAY_ADDRESS), the configured one, or starts a local one.

    Unless --verbose, the terminal shows what sa-ray says (progress, results) and the workers' warnings and errors:
    Ray's and the libraries' loggers in the driver write to the run's log file, and in the workers they log from
    WARNING up, without progress bars of their own (the workers' full logs stay in Ray's session directory)."""
    import ray

    if ray.is_initialized():
        return
    quiet = {} if verbose() else {"logging_config": ray.LoggingConfig(log_level="WARNING")}
    log_file = Path(cfg.run_dir) / "logs" / "jobs.log"
    if quiet:
        log_libraries_to(log_file)
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:  # a submitted job keeps the runtime environment it was submitted with
        context = ray.init(address=address, log_to_driver=True, **quiet)
    else:
        context = start_local_ray(
            num_cpus=cfg.ray.num_cpus, env=None if verbose() else QUIET_WORKERS, log_to_driver=True, **quiet
        )
    from actors.placement import check_shared

    check_shared(cfg.run_dir)
    if quiet:
        log_libraries_to(log_file)  # again: ray.init gave the driver's Ray logger a terminal handler of its own
        node = getattr(ray._private.worker, "_global_node", None)  # where the workers' output went
        logging.getLogger("ray").warning(
            "%s: Ray's dashboard at %s; the workers' logs are in %s",
            " ".join(sys.argv),
            context.dashboard_url or "-",
            f"{node.get_session_dir_path()}/logs" if node else "Ray's session logs",
        )


def log_libraries_to(path: Path) -> None:
    """The library loggers' terminal handlers replaced by one file handler (their own file handlers stay)."""
    import ray.data  # noqa: F401 - configures its logger on import; this must come after

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)  # warnings.warn(...) -> the py.warnings logger
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler)
            and (not isinstance(h, logging.FileHandler) or h.baseFilename == handler.baseFilename)
        ]:
            logger.removeHandler(old)
            if isinstance(old, logging.FileHandler):
                old.close()
        logger.addHandler(handler)
        logger.propagate = False


def local_ray_env() -> dict[str, str]:
    """LOCAL_RAY_ENV, each variable as the user exported it where they did."""
    return {name: os.environ.get(name, value) for name, value in LOCAL_RAY_ENV.items()}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int | None = None, env: dict[str, str] | None = None, **init):
    """A local Ray instance whose State API answers for it, and only for it.

    Ray Train's placement-group cleaner asks the State API every second whether the run's controller lives.
    Without a dashboard there is no State API (a warning a second in the job's log), and a worker left to find
    one takes the machine's newest Ray instance: if that is another one with a dashboard (a `ray start --head`,
    a second job), the controller is "not found" there and the cleaner removes the run's placement group,
    killing it (seen here: a pretrain run killed by a second `ray.init` on the machine). So the dashboard
    runs on a port picked here and every worker of this instance is told, by RAY_API_SERVER_ADDRESS, where it is.
    """
    import ray
    import ray.data

    port = free_port()
    env = {**local_ray_env(), **(env or {}), "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    # a read's datasource is picked where it is planned: in this process too, whose DataContext already exists
    ray.data.DataContext.get_current().use_datasource_v2 = env["RAY_DATA_USE_DATASOURCE_V2"].lower() in ("1", "true")
    return ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        runtime_env={"env_vars": env},
        **init,
    )


def _user_error(exc: BaseException) -> str | None:
    """The message of a foreseeable mistake, also when Ray wrapped it on its way from a worker."""
    from sa_ray.corpus.voices import VoiceError
    from sa_ray.data.validate import BadInputError
    from sa_ray.lineage import LineageError
    from sa_ray.synthesis import TextError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConfigError, BadInputError, VoiceError, TextError, FileNotFoundError, LineageError)):
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
