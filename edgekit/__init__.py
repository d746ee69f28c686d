"""edgekit: take an ONNX model from a laptop to thousands of edge devices, safely.

The library face: what the ``edgekit`` commands call, for scripts and notebooks.

    import edgekit

    edgekit.quantize("model.onnx", "model.int8.onnx", edgekit.QuantizeSettings(calibration="calib/"))
    edgekit.package("model.int8.onnx", edgekit.PackageSettings(name="digits", version="1.1"), "image")
    pushed = edgekit.push("image", "registry.example.com/models/digits:1.1")
    digest, signatures = edgekit.verify(pushed.reference, "cosign.pub")
    with edgekit.RolloutClient.connect() as rollouts:
        rollouts.push(pushed.reference, group="cameras", app="digits", waves="1,10%,100%")

Every name loads its module on first use: ``import edgekit`` (which every command does) stays cheap,
and ``quantize`` alone pulls in onnxruntime, ``RolloutClient`` the Kubernetes client. Errors are
``EdgekitError`` subclasses; ``TemporaryError`` ones are worth retrying (after ``retry_after``),
``PermanentError`` ones are not. See docs/library.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgekit_agent.errors import EdgekitError, PermanentError, TemporaryError
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.fleet.settings import FleetSettings
    from edgekit.fleet.views import FleetView
    from edgekit.fleet.watching import FleetWatcher
    from edgekit.image.building import PackageSettings, package
    from edgekit.image.pushing import push
    from edgekit.image.signing import verify_image as verify
    from edgekit.optimize.quantizing import QuantizeSettings, quantize
    from edgekit.rollout.client import RolloutClient

# name -> (module, attribute)
_FACE: dict[str, tuple[str, str]] = {
    "quantize": ("edgekit.optimize.quantizing", "quantize"),
    "QuantizeSettings": ("edgekit.optimize.quantizing", "QuantizeSettings"),
    "package": ("edgekit.image.building", "package"),
    "PackageSettings": ("edgekit.image.building", "PackageSettings"),
    "push": ("edgekit.image.pushing", "push"),
    "verify": ("edgekit.image.signing", "verify_image"),
    "RegistryOptions": ("edgekit_agent.oci.registry", "RegistryOptions"),
    "FleetWatcher": ("edgekit.fleet.watching", "FleetWatcher"),
    "FleetSettings": ("edgekit.fleet.settings", "FleetSettings"),
    "FleetView": ("edgekit.fleet.views", "FleetView"),
    "RolloutClient": ("edgekit.rollout.client", "RolloutClient"),
    "EdgekitError": ("edgekit_agent.errors", "EdgekitError"),
    "TemporaryError": ("edgekit_agent.errors", "TemporaryError"),
    "PermanentError": ("edgekit_agent.errors", "PermanentError"),
}

__all__ = [
    "EdgekitError",
    "FleetSettings",
    "FleetView",
    "FleetWatcher",
    "PackageSettings",
    "PermanentError",
    "QuantizeSettings",
    "RegistryOptions",
    "RolloutClient",
    "TemporaryError",
    "package",
    "push",
    "quantize",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import a face name's module on first access (PEP 562) and keep the name here."""
    try:
        module, attribute = _FACE[name]
    except KeyError:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
