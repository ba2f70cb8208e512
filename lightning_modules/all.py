"""Import every method module so that each registers its name."""

from facebench.lightning_modules import baselines  # noqa: F401
from facebench.lightning_modules import mcnn  # noqa: F401
from facebench.lightning_modules import lnets_anet  # noqa: F401
from facebench.lightning_modules import semantic_cnn  # noqa: F401
from facebench.lightning_modules import lacnn  # noqa: F401
from facebench.lightning_modules import branching, dlib_probe  # noqa: F401
from facebench.lightning_modules import mtl_cnn  # noqa: F401
