"""The figures of ``benchmarks/run.py``, one module each.

``common``: settings, timing (interleaved calls, medians, paired ratios), op counting,
fake data, the peers and the pieces several figures share; ``training`` (figure 1, the
adversarial / clean iteration ratio), ``attacks`` (figure 2, attack throughput against
torchattacks, Foolbox and the floor), ``table`` (figure 3, the white-box table, the
recipe extrapolation and the H100 projection), ``strong`` (figure 4, APGD-CE, APGD-T and
Square against torchattacks) and ``report`` (the printed table and the JSON file).
"""
