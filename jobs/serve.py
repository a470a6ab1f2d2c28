"""serve: a Ray Serve HTTP endpoint that speaks with the champion policy (or a named version or alias, or the base).

    python -m jobs.serve --config configs/tiny.yaml                       # models:/tiny-policy@champion, port 8000
    python -m jobs.serve --config configs/tiny.yaml serve.model=models:/tiny-policy@best serve.port=8001
    ray job submit --working-dir . -- python -m jobs.serve --detach run_dir=/abs/runs/tiny

    curl -s localhost:8000/synthesize -d '{"text": "The cat sat on the mat.", "speaker": "mbrola-us2"}' -o cat.wav
    curl -s localhost:8000/synthesize -d '{"text": "...", "speaker": "mbrola-us2", "version": "best"}' -o best.wav
    curl -s localhost:8000/v1/models                                  # the versions a request may name

The base model is align.base_model (else <run_dir>/pretrain/model), the voices those of <run_dir>/data. Without
--detach the job holds the endpoint until Ctrl-C; with it (on a running cluster) the endpoint outlives the job.
A serve.host beyond loopback needs serve.auth_token (or $SA_RAY_SERVE_TOKEN). The application itself is actors.voice_server.voice_app's
(what a KubeRay RayService builds with actors.voice_server:app_builder).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request

from jobs import _cli
from sa_ray.config import load_config

APP = "sa-ray-voice"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_job_options(ap)
    ap.add_argument("--config", default=_cli.DEFAULT_CONFIG)
    ap.add_argument("--detach", action="store_true", help="deploy and return (the endpoint stays on the cluster)")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from actors.voice_server import voice_app

    application = voice_app(cfg)  # checks first (data, base model, version, a token off loopback), before Ray

    _cli.init_ray(cfg)
    from ray import serve

    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(application, name=APP, route_prefix="/")
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    auth = {"Authorization": f"Bearer {cfg.serve.auth_token}"} if cfg.serve.auth_token else {}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/health", headers=auth), timeout=60) as response:
        health = json.load(response)
    waiting = health["version"] == "base" and cfg.serve.model != "base"
    why = ": no version has beaten the base beyond noise yet" if health["model"].endswith("@champion") else ""
    header = "-H 'Authorization: Bearer <serve.auth_token>' " if auth else ""  # the token is not printed
    print(
        f"serving {health['model']} (version {health['version']}{(why or ': none registered yet') if waiting else ''}) "
        f"at {url}{' (the page: ' + url + '/#token=<serve.auth_token>)' if auth else ''}\nvoices: {', '.join(health['speakers'])}\n"
        f"try: curl -s {url}/synthesize {header}-d "
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
