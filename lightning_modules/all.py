"""Import every method module so that each registers its name."""

from lightning_modules import baselines  # noqa: F401
from lightning_modules import mcnn  # noqa: F401
from lightning_modules import lnets_anet  # noqa: F401
from lightning_modules import semantic_cnn  # noqa: F401
from lightning_modules import lacnn  # noqa: F401
from lightning_modules import branching, dlib_probe  # noqa: F401
from lightning_modules import mtl_cnn  # noqa: F401
