"""Base config shared by every stage; stage files (configs/<stage>.py) start from get_config().

Every field can be overridden on the command line, e.g.
  python -m refine_jax.main --config=configs/pretrain.py --config.train.steps=100 \
      --config.model.hidden=256 --config.mesh.fsdp=4 --workdir=runs/my-run
Unknown fields are rejected (the config is locked), and main.py validates the resolved config
before anything is built. The fields and their defaults, each commented, are in
refine_jax/config.py (the library rebuilds configs from it too).
"""

from refine_jax.config import base_config as get_config  # noqa: F401
from refine_jax.config import tiny_deltanet  # noqa: F401
