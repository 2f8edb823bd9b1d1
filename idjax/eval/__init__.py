"""Identity metrics (metrics.py) and the held-out evaluation protocol (benchmark.py).

  python -m idjax.eval --workdir DIR --num-identities 8 --out table.json
"""
