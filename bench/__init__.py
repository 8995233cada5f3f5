"""slp's benchmark: the agent against the bare llama-server it supervises, side by side in one run.

Run it with `make bench` or `python -m bench` (see `python -m bench --help`); results are written to
bench/results/latest.{md,json,png}.
"""
