"""serve: a Ray Serve HTTP endpoint that speaks with the latest aligned policy (or a named version, or the base).

    python -m jobs.serve --config configs/tiny.yaml                       # models:/tiny-policy@latest, port 8000
    python -m jobs.serve --config configs/tiny.yaml serve.model=models:/tiny-policy@best serve.port=8001
    ray job submit --working-dir . -- python -m jobs.serve --detach run_dir=/abs/runs/tiny

    curl -s localhost:8000/synthesize -d '{"text": "The cat sat on the mat.", "speaker": "mbrola-us2"}' -o cat.wav

The base model is align.base_model (else <run_dir>/pretrain/model), the voices those of <run_dir>/data. Without
--detach the job holds the endpoint until Ctrl-C; with it (on a running cluster) the endpoint outlives the job.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from pathlib import Path

from jobs import _cli
from sa_ray.config import load_config
from sa_ray.models.vocab import Vocab
from sa_ray.serve import RegisteredPolicy

APP = "sa-ray-voice"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_job_options(ap)
    ap.add_argument("--config", default=_cli.DEFAULT_CONFIG)
    ap.add_argument("--detach", action="store_true", help="deploy and return (the endpoint stays on the cluster)")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.run_dir).resolve()
    cfg.run_dir = str(run_dir)  # replicas may start in another working directory
    _cli.prepared(run_dir)
    base_dir = _cli.base_model(cfg)
    cfg.eval.check_model(Vocab.load(base_dir / "ar").aligned)
    RegisteredPolicy.of_config(cfg).resolve()  # a version that is not registered fails here, named, not in a replica

    _cli.init_ray(cfg)
    from ray import serve

    from actors.voice_server import VoiceServer

    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    voice = VoiceServer.options(num_replicas=cfg.serve.replicas, ray_actor_options={"num_cpus": cfg.serve.num_cpus})
    serve.run(voice.bind(cfg, str(base_dir)), name=APP, route_prefix="/")
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
        health = json.load(response)
    waiting = health["version"] == "base" and cfg.serve.model != "base"
    print(
        f"serving {health['model']} (version {health['version']}{': none registered yet' if waiting else ''}) "
        f"at {url}\nvoices: {', '.join(health['speakers'])}\ntry: curl -s {url}/synthesize -d "
        f'\'{{"text": "The cat sat on the mat.", "speaker": "{health["speakers"][0]}"}}\' -o cat.wav',
        flush=True,
    )
    if args.detach:
        return url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(APP)
    return url


if __name__ == "__main__":
    _cli.run(main)
