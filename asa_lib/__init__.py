"""ASA: Activation Steering Adapter for tool calling.

``from asa_lib import ASA`` gives the public API (:mod:`asa_lib.api`); it is
imported on first use, so ``import asa_lib`` stays light.
"""

from asa_lib._version import __version__ as __version__

__all__ = ["ASA", "AdapterError", "Decision", "Generation", "ModelMismatchError", "SteeringError"]


def __getattr__(name: str):
    if name in ("ASA", "AdapterError", "Generation", "ModelMismatchError"):
        from asa_lib import api

        return getattr(api, name)
    if name in ("Decision", "SteeringError"):
        from asa_lib.method import online

        return getattr(online, name)
    raise AttributeError(f"module 'asa_lib' has no attribute {name!r}")
