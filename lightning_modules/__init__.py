"""facebench methods: one LightningModule per paper, on the shared base in ``base.py``."""

from facebench.lightning_modules.registry import create_method, get_method_class, method_names, register_method

__all__ = ["create_method", "get_method_class", "method_names", "register_method"]
