"""The application layer: what a user runs, built from the parts.

* :mod:`delibench.app.session` prepares, runs, diagnoses, prices and records one run (``run``) or
  several loaders interleaved (``compare``);
* :mod:`delibench.app.lab` stands up a testbed, a dataset and the storage options that reach it, for
  the demo, the bench and the benchmark scripts alike;
* :mod:`delibench.app.demo` and :mod:`delibench.app.bench` are two clients of both.

Parts (loaders, workloads, tuning, reports, geo, testbed) never import this layer; the CLI does.
"""
