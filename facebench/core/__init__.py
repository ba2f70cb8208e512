"""The bottom layer every facebench layer uses, importing nothing of the project above it.

* :mod:`~facebench.core.tasks`: the task description (:class:`TaskSpec`, :class:`Target`) that
  datamodules declare and methods, metrics and reports read;
* :mod:`~facebench.core.config`: checking configuration mappings against constructors and
  config dataclasses (one clear error naming unknown keys);
* :mod:`~facebench.core.io`: atomic file writes (temporary file + rename);
* :mod:`~facebench.core.registry`: the one registry class behind datasets, methods, analyses
  and loss weightings (``@register_*`` decorators, ``create_*(name, ...)``).

Layers import downward only: ``benchmarks`` -> ``lightning_modules`` -> ``datamodules`` -> ``core``
(``tests/test_layers.py`` reads every module's imports to hold this).
"""
