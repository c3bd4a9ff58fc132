"""Benchmarks of the solvers and the pretrained networks, each a module that runs alone.

- :mod:`bench.ista_throughput`: batched ISTA and FISTA time per iteration against the two GEMMs
  that an iteration needs, in float32 and float64. Default sizes: the 250 × 500 reference problem,
  batch 1,000, ``max_iter`` 200 per timed call.
- :mod:`bench.unrolled_vs_fista`: the forward pass of every pretrained model against the FISTA
  iterations that reach the model's test NMSE. Defaults: ``reg`` chosen from a 10-value grid on
  256 validation samples, at most 1,000 FISTA iterations.

Every figure is a median over 5 timed rounds after a warm-up round, and the timings of one table
are measured in interleaved rounds. ``python -m bench`` (``make bench``) runs both benchmarks and
rewrites ``docs/benchmarks.md``; ``python -m bench.<module>`` runs one and prints its ratio as
the last line. ``--threads`` sets ``torch.set_num_threads`` (default: all available cores), and
``--help`` lists the other options.
"""
