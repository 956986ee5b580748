"""The HIGGS training pipeline: every real step, usable without Prefect.

    .venv/bin/python -m pipeline.cli --help                # every step as a `higgs` subcommand
    .venv/bin/python -m pipeline.cli run --preset sample   # = higgs run: the whole chain in-process

The layout, one package per stage over a small core (README.md has the same map; docs/ the detail):

    pipeline/core/        config (typed config, presets, overrides) + config_rules (checks at load), errors,
                          storage (local + gs://), schema (feature names, record spec), tfk (the one tf_keras
                          import), rundir (owner of the run directory), ports (free loopback ports)
    pipeline/data/        synth (generator), source (download/locate), records (TFRecord encode/decode),
                          dataset (owns the data directory / manifest), presplit, convert (the Beam pipeline)
    pipeline/training/    model, inputs (tf.data), strategy, optim, train (in-process training), lrfind, tune
    pipeline/evaluation/  metrics, evaluate, report, baseline (BDT), export (SavedModel)
    pipeline/publish/     store (published models, latest.json)
    pipeline/cloud/       dataflow, vertex + vertex_replica (Vertex AI), launch (local multi-worker cluster)
    pipeline/backends.py  where training runs: in process, local cluster, Vertex AI
    pipeline/chain.py     the whole chain in one process (the steps the flow and `higgs run` call)
    pipeline/cli.py       the `higgs` command

Importing this package does nothing: no TensorFlow, Beam or Prefect is loaded until a module
that needs it is imported.
"""
