"""Models of the simulated fleet: each image fetched once from the registry by digest and loaded
into one onnxruntime session that every virtual device running it shares.

Fetching and loading use the agent's own code (``edgekit_agent.loading``: fetch, verify digest and
signature, build the session, check the golden probe), so a model the real agent would refuse is
refused here too.

A model is one (image, platform) pair: a device takes the layer of its node's platform
(``kubernetes.io/arch``), as a real device of that class would, so an image with a layer per
platform puts different models on amd64 and arm64 devices. ``None`` is this machine's platform.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from edgekit_agent.errors import EdgekitError
from edgekit_agent.loading import LoadedModel, fetch_model, load_model
from edgekit_agent.probing import Probe

log = logging.getLogger(__name__)


def failing_probe(probe: Probe) -> Probe:
    """The same probe with expected outputs moved far outside tolerance: ``run_probe`` fails."""
    outputs = {name: (np.asarray(value) + 1.0 + 10 * (abs(probe.atol) + 1)).astype(np.asarray(value).dtype)
               if np.asarray(value).dtype.kind in "fc" else value
               for name, value in probe.outputs.items()}
    return dataclasses.replace(probe, outputs=outputs)


class ModelStore:
    """(``image@digest``, platform) -> LoadedModel, fetched and loaded at most once, in the background."""

    def __init__(self, cache_dir: Path, *, registry_options: Any = None, public_key: str | None = None,
                 allow_unsigned: bool = False, workers: int = 2) -> None:
        self.cache_dir = Path(cache_dir)
        self.registry_options = registry_options
        self.public_key = public_key
        self.allow_unsigned = allow_unsigned
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-fetch")
        self._futures: dict[tuple[str, str | None], Future[LoadedModel]] = {}
        self._variants: dict[tuple[str, str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, image: str, platform: str | None = None) -> Future[LoadedModel]:
        with self._lock:
            future = self._futures.get((image, platform))
            if future is None or (future.done() and future.exception() is not None):
                future = self._pool.submit(self._load, image, platform)
                self._futures[(image, platform)] = future
            return future

    def ready(self, image: str, platform: str | None = None) -> LoadedModel | None:
        future = self.get(image, platform)
        if not future.done() or future.exception() is not None:
            return None
        return future.result()

    def error(self, image: str, platform: str | None = None) -> BaseException | None:
        future = self._futures.get((image, platform))
        return future.exception() if future is not None and future.done() else None

    def _load(self, image: str, platform: str | None = None) -> LoadedModel:
        digest = image.rsplit("@", 1)[-1]
        key = image if platform is None else f"{image} {platform}"
        folder = self.cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24]
        try:
            if not (folder / "edgekit.json").exists():
                fetch_model(image, folder, public_key=self.public_key, allow_unsigned=self.allow_unsigned,
                            options=self.registry_options, platform=platform)
            loaded = load_model(folder, image=image, public_key=self.public_key,
                                allow_unsigned=self.allow_unsigned, intra_op_threads=1,
                                registry_options=self.registry_options)
        except EdgekitError as exc:
            log.warning("sim: cannot load %s: %s", image, exc.one_line())
            raise
        log.info("sim: loaded %s %s (%s, %s)", loaded.name, loaded.meta.version, digest[:19], platform or "this host")
        return loaded

    def with_failing_probe(self, loaded: LoadedModel) -> LoadedModel:
        """The same session with a probe that fails (shared by every device that needs it)."""
        key = (loaded.digest, loaded.meta.model.sha256, "probe-fail")  # one per platform's model
        with self._lock:
            variant = self._variants.get(key)
            if variant is None:
                variant = dataclasses.replace(loaded, probe=failing_probe(loaded.probe))
                self._variants[key] = variant
            return variant

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
