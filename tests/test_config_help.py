import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from jobs._cli import parse
from sa_ray.config import Config

REPO = Path(__file__).resolve().parents[1]


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def test_every_setting_and_section_is_described():
    sections = _sections()
    settings = [(Config, f) for f in dataclasses.fields(Config) if f.name not in sections]
    settings += [(cls, f) for cls in sections.values() for f in dataclasses.fields(cls)]
    undescribed = [f"{cls.__name__}.{f.name}" for cls, f in settings if not f.metadata.get("help", "").strip()]
    assert not undescribed, f"settings without a description: {undescribed}"
    # A dataclass without a docstring gets its signature as __doc__: a section must say what it is.
    unexplained = [cls.__name__ for cls in [Config, *sections.values()] if cls.__doc__.startswith(f"{cls.__name__}(")]
    assert not unexplained, f"sections without a docstring: {unexplained}"


def test_help_config_lists_every_key_with_type_default_and_description(capsys):
    # --help-config acts as it is read: a missing --config file is never opened.
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", "no/such.yaml", "--help-config"], "a job")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in Config().flat():
        assert f"\n  {key}  " in out, key
    for section in _sections():
        assert f"\n{section}: " in out, section
    assert "  codec.n_codebooks  int = 8\n" in out
    assert "  corpus.voices  list[str] = [mbrola-us1, mbrola-us2, mbrola-us3, mbrola-en1]\n" in out
    assert "  pretrain.init_from  str | None = null\n" in out
    assert "  serve.model  str = ''\n" in out
    assert "zero-shot evaluation speakers" in out and "cdpo's label-flip probability" in out


def test_help_mentions_help_config(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"], "a job")
    assert "--help-config" in capsys.readouterr().out


def test_help_config_starts_nothing_heavy():
    script = (
        "import sys\nfrom jobs._cli import parse\ntry:\n    parse(['--help-config'], 'a job')\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "heavy = sorted({'ray', 'torch', 'transformers', 'mlflow'} & set(sys.modules))\n"
        "assert not heavy, heavy\nprint('light')"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("light") and "align.method" in done.stdout
