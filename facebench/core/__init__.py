"""The bottom layer every facebench layer uses, importing nothing of the project above it.

* :mod:`~facebench.core.tasks`: the task description (:class:`TaskSpec`, :class:`Target`) that
  datamodules declare and methods, metrics and reports read;
* :mod:`~facebench.core.config`: checking configuration mappings against constructors and
  config dataclasses (one clear error naming unknown keys);
* :mod:`~facebench.core.io`: atomic file writes (temporary file + rename);
* :mod:`~facebench.core.paths`: where results go (the current directory's ``results/``) and the
  source checkout, if any;
* :mod:`~facebench.core.registry`: the one registry class behind datasets, methods, analyses
  and loss weightings (``@register_*`` decorators, ``create_*(name, ...)``);
* :mod:`~facebench.core.plugins`: importing the user's modules, ``module:Class`` import paths
  and entry points, with one-line errors;
* :mod:`~facebench.core.source_index`: what a registry holds, read from the source without importing
  it (``facebench list``: registered classes, their settings, constructor arguments and docstrings);
* :mod:`~facebench.core.agreement`: agreement between raters (Fleiss' kappa) and of a model with
  raters (the leave-one-rater-out human ceiling), which datamodules, metrics and reports share.

Layers import downward only: ``benchmarks`` -> ``lightning_modules`` -> ``datamodules`` -> ``core``
(``tests/test_layers.py`` reads every module's imports to hold this).
"""
