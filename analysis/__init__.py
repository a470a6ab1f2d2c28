"""Reports over results: evaluations, align runs' records and pairs, policy versions' samples - the quality
figures behind the docs (run as `python -m analysis.<name>`). Speed and cost measurements live in `benchmarks`."""
