"""Measurements that run the system: speed, cost and the codec's round trip (run as `python -m benchmarks.<name>`).
Reports over results live in `analysis`."""
