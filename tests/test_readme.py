"""README's command blocks run as written, pasted into a fresh shell at the repository root after `make install`.

Every ```bash block of README.md (and of clusters/local/README.md and docs/cluster.md, which it links for the
cluster steps) is read
as a shell would read it. For each command:
- `python -m jobs.X ...`: the job's own argument parser accepts the arguments and every `dotted.key=value`
  validates against the config (the parser runs, then stops: no Ray, no work);
- `python -m M`: the module exists;
- `make T`: the Makefile has the target;
- every repository path a command names (configs/..., checkpoints/..., .venv/bin/...) exists; what the jobs
  write (runs/, mlruns/, data/) is not checked.
The cluster block is also run for real (slow): a head with token authentication started exactly as the block
starts it, on free ports and its own temp dir, a job submitted to it, and that head (only it) stopped.
Every relative link of README.md points at an existing file and, with an anchor, an existing heading.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

import psutil
import pytest

from .ray_head import _free_ports, _ours

REPO = Path(__file__).resolve().parents[1]
DOCS = {
    "README.md": REPO / "README.md",
    "clusters/local/README.md": REPO / "clusters" / "local" / "README.md",
    "docs/cluster.md": REPO / "docs" / "cluster.md",
}
OPERATORS = {"&&", "||", ";", "|", "&", ";;", "(", ")"}
OUTPUTS = {"runs", "mlruns", "data", "logs"}  # what the jobs write: not there before they run


def bash_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", doc.read_text(), flags=re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[list[str]]:
    """The block's simple commands as a shell splits them (continuations joined, comments and redirections
    dropped, `$PWD` and `$HOME` expanded), one token list per command."""
    text = block.replace("\\\n", " ").replace("$PWD", str(REPO)).replace("$HOME", str(Path.home()))
    out, lines = [], text.splitlines()
    while lines:
        line = lines.pop(0)
        while True:  # a quoted string may span lines
            try:
                tokens = _tokens(line)
                break
            except ValueError:
                assert lines, f"unclosed quote in {line!r}"
                line += "\n" + lines.pop(0)
        cmd: list[str] = []
        skip = False
        for tok in tokens:
            if skip:
                skip = False
            elif re.fullmatch(r"[<>]+&?", tok):  # a redirection: drop it, its target and its fd number
                skip = True
                if cmd and cmd[-1].isdigit() and re.search(rf"\s{cmd[-1]}[<>]", line):
                    cmd.pop()
            elif tok in OPERATORS:
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            out.append(cmd)
    return out


def _tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def python_modules(cmd: list[str]) -> list[tuple[str, list[str]]]:
    """(module, its arguments) of every `python -m module ...` in a command (also after `ray job submit --`)."""
    found = []
    for i, tok in enumerate(cmd[:-2]):
        if Path(tok).name.startswith("python") and cmd[i + 1] == "-m":
            found.append((cmd[i + 2], cmd[i + 3 :]))
    return found


def every_command(doc: str) -> list[list[str]]:
    return [cmd for block in bash_blocks(DOCS[doc]) for cmd in commands(block)]


class _Parsed(Exception):
    pass


def parse_job(module: str, argv: list[str]) -> argparse.Namespace | None:
    """The job's own parser on `argv`, stopped right after parsing; then its overrides validated as the job does."""
    from sa_ray.config import load_config

    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    job = importlib.import_module(module)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop):
        try:
            job.main(argv)
        except _Parsed as parsed:
            ns = parsed.args[0]
        except SystemExit as e:
            if e.code == 0 and ("--help-config" in argv or "--help" in argv or "-h" in argv):
                return None  # printed what was asked and exited, as it should
            raise AssertionError(f"{module} {shlex.join(argv)}: the parser refused it (exit {e.code})") from e
        else:
            raise AssertionError(f"{module}.main never parsed its arguments")
    if hasattr(ns, "overrides"):
        load_config(getattr(ns, "config", None) or "configs/tiny.yaml", ns.overrides)  # raises ConfigError
    return ns


def repo_paths(cmd: list[str]) -> list[str]:
    """The repository paths a command names: tokens (or `key=value` values, `sqlite:///` URIs) whose first
    component is a top-level entry of the checkout or `.venv`."""
    roots = {p.name for p in REPO.iterdir() if p.name not in OUTPUTS and not p.name.startswith(".")} | {".venv"}
    found = []
    for tok in cmd:
        for value in (tok, tok.split("=", 1)[-1]):
            value = value.removeprefix("sqlite:///").removeprefix(str(REPO) + "/").removeprefix("./")
            if "/" in value and value.split("/", 1)[0] in roots:
                found.append(value)
    return found


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))


@pytest.fixture()
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_readme_has_the_blocks_it_promises():
    blocks = bash_blocks(DOCS["README.md"])
    assert any("make demo" in b and "make test" in b for b in blocks)
    assert any("ray job submit" in b for b in blocks)
    assert any("mlflow ui" in b for b in blocks)
    assert len(DOCS["README.md"].read_bytes()) < 16_000, "README is the user's page: details go to docs/"


@pytest.mark.parametrize("doc", list(DOCS))
def test_every_job_command_parses(doc, at_repo):
    jobs = [(m, a) for cmd in every_command(doc) for m, a in python_modules(cmd) if m.startswith("jobs.")]
    assert jobs or doc != "README.md"
    for module, argv in jobs:
        parse_job(module, argv)


@pytest.mark.parametrize("doc", list(DOCS))
def test_every_module_make_target_and_path_exists(doc):
    targets = make_targets()
    for cmd in every_command(doc):
        for module, _ in python_modules(cmd):
            assert importlib.util.find_spec(module) is not None, f"{doc}: no module {module}"
        for i, tok in enumerate(cmd[:-1]):
            if Path(tok).name == "make" and not cmd[i + 1].startswith("-") and "=" not in cmd[i + 1]:
                assert cmd[i + 1] in targets, f"{doc}: no make target {cmd[i + 1]}"
        for path in repo_paths(cmd):
            assert (REPO / path).exists(), f"{doc}: {shlex.join(cmd)} names {path}, which does not exist"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve():
    text = DOCS["README.md"].read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / path if path else DOCS["README.md"]
        assert file.exists(), f"README links {target}: no such file"
        if anchor and file.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), flags=re.MULTILINE)}
            assert anchor in slugs, f"README links {target}: no such heading in {file.relative_to(REPO)}"


def _cluster_block() -> str:
    (block,) = [b for b in bash_blocks(DOCS["README.md"]) if "ray start" in b]
    return block


def test_cluster_block_creates_its_token_and_stops_only_its_head():
    """The token file exists before `ray start` (RAY_AUTH_TOKEN_PATH naming a missing file stops the head:
    "RAY_AUTH_TOKEN_PATH is set but file cannot be opened"), and the block never runs `ray stop`."""
    block = _cluster_block()
    cmds = commands(block)
    flat = [" ".join(c) for c in cmds]
    start = next(i for i, c in enumerate(flat) if c.startswith("ray start --head"))
    assert any("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in flat[:start])
    assert '> "$RAY_AUTH_TOKEN_PATH"' in block.split("ray start")[0], "the token file is written before ray start"
    assert "--block" in cmds[start] and "--temp-dir=/tmp/ray-sa" in cmds[start]
    assert flat[start + 1] == "HEAD_PID=$!" and flat[-1] == "kill $HEAD_PID"
    assert not any(c.startswith("ray stop") for c in flat)


def _run_cluster_block(block: str, tmp: Path) -> subprocess.CompletedProcess:
    """The block as written, on free ports and a temp dir of its own, with HOME in `tmp` (the token goes there)
    and a quick job in place of the align run (its arguments are checked by test_every_job_command_parses)."""
    gcs, dashboard, client, agent = _free_ports(4)
    block = block.replace("--port=6379", f"--port={gcs}").replace("127.0.0.1:8265", f"127.0.0.1:{dashboard}")
    block = block.replace("--dashboard-port=8265", f"--dashboard-port={dashboard}")
    block = block.replace("/tmp/ray-sa", str(tmp / "ray"))
    block = block.replace(
        "ray start --head",
        f"ray start --head --num-cpus=1 --object-store-memory=200000000 "
        f"--ray-client-server-port={client} --dashboard-agent-listen-port={agent}",
    )
    job = re.search(r"--working-dir \. -- \\\n(.*?)\nkill", block, flags=re.DOTALL)
    assert job, block
    block = block.replace(job.group(1), "    python -c \"import jobs.align; print('README JOB OK')\"")
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5")
    return subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )


def _wait_gone(tmp: Path, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := _ours(tmp)) and time.monotonic() < deadline:
        time.sleep(1)
    return left


@pytest.mark.slow
def test_cluster_block_runs():
    tmp = Path(tempfile.mkdtemp(prefix="rsa-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        r = _run_cluster_block(_cluster_block(), tmp)
        log = tmp / "ray-head.log"
        head_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        assert r.returncode == 0 and "README JOB OK" in r.stdout, f"{r.stdout}\n--- head log:\n{head_log}"
        assert "succeeded" in r.stdout, r.stdout
        assert (tmp / "home" / ".ray" / "sa-ray-token").stat().st_mode & 0o077 == 0  # the token is private
        left = _wait_gone(tmp, 60)  # `kill $HEAD_PID`: the head drains and stops its own processes
        assert not left, f"still running after kill $HEAD_PID: {[p.pid for p in left]}"
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the cluster block did not finish in {e.timeout} s:\n{e.output}") from e
    finally:
        leftovers = _ours(tmp)  # ours alone: they name our unique temp dir
        for p in leftovers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_config_error_shown_is_the_one_printed(at_repo):
    """README's example of a refused override (`$ python -m jobs.X ...` then `error: ...`) is the job's message."""
    from sa_ray.config import ConfigError

    text = DOCS["README.md"].read_text()
    examples = re.findall(r"^\$ python -m (jobs\.\w+) (.*)\nerror: (.*)$", text, flags=re.MULTILINE)
    assert examples
    for module, args, message in examples:
        with pytest.raises(ConfigError) as refused:
            parse_job(module, shlex.split(args))
        assert str(refused.value) == message
