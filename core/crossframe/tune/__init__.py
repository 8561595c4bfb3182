"""Hyperparameter search on Optuna: ``crossframe tune CONFIG`` and :func:`crossframe.tune.api.tune`.

A services-floor package: it imports config, plugins and train, and nothing below imports it.
Modules: ``schema`` (the ``tune:`` section), ``space`` (sampling and the schema check), ``plan``
(a study's saved plan), ``study`` (Optuna storage, sampler, pruner, dead-trial recovery),
``trial`` (one trial as a run, pruned through ``on_eval_end``), ``worker`` (a loop of trials, also a
child process), ``parallel`` (``--jobs N``), ``progress`` and ``report``, and ``api`` (the whole).
"""
