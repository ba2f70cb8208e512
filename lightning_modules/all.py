"""Import every method module so that each registers its name."""

from lightning_modules import baselines  # noqa: F401
