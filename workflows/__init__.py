"""The layer on top: what drives several stages. The ``s4seg`` command (the composition
root, ``cli.py``), the first-run demo (``quickstart``), ``doctor`` and the benchmarks
(``bench/``). Nothing below imports it."""
