"""A job's terminal carries what sa-ray says; Ray's and the libraries' own logs go to the run's log file, unless
--verbose (jobs._cli). Checked in a child interpreter, so that this process's logging stays as it is."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import logging, sys, warnings
    from pathlib import Path
    import mlflow  # configures its logger on import, as in every job
    from jobs import _cli

    cfg, _ = _cli.parse(sys.argv[1:], "t: test")
    if not _cli.verbose():
        _cli.log_libraries_to(Path(cfg.run_dir) / "logs" / "jobs.log")
    logging.getLogger("ray.data").info("an execution plan")
    logging.getLogger("ray.train").warning("controller chatter")
    logging.getLogger("mlflow").info("creating initial tables")
    warnings.warn("a library deprecation", DeprecationWarning, stacklevel=1)
    print("what sa-ray says")
""")


def _run(tmp_path: Path, *flags: str) -> tuple[str, str, str]:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", CHILD, f"run_dir={tmp_path}", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    log = tmp_path / "logs" / "jobs.log"
    return done.stdout, done.stderr, log.read_text() if log.exists() else ""


def test_library_logs_go_to_the_run_log_and_sa_rays_output_to_the_terminal(tmp_path):
    out, err, log = _run(tmp_path)
    assert out.strip() == "what sa-ray says"
    for line in ("an execution plan", "controller chatter", "creating initial tables", "a library deprecation"):
        assert line not in err and line in log, line


def test_verbose_keeps_them_on_the_terminal(tmp_path):
    out, err, log = _run(tmp_path, "--verbose")
    assert out.strip() == "what sa-ray says" and log == ""
    assert "controller chatter" in err and "a library deprecation" in err
