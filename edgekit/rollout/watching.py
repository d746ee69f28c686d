"""List + watch a Kubernetes collection in a background thread and keep the objects current.

One LIST, then one long WATCH from its resourceVersion (with bookmarks), re-opened when the server
ends it and re-listed only when the server says the version is gone (410). Requests go through
``KubeClient`` so they are counted like every other call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from edgekit.kube.client import KubeClient, translating

log = logging.getLogger(__name__)

WATCH_SECONDS = 240


class ListWatch:
    """Objects of one collection (``path``, selectors) by name, kept current; ``wait`` wakes on change."""

    def __init__(self, client: KubeClient, path: str, *, label_selector: str | None = None,
                 field_selector: str | None = None, on_change: Callable[[], None] | None = None) -> None:
        self.client = client
        self.path = path
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_change = on_change
        self.objects: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.version = 0
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def start(self, timeout: float = 30.0) -> ListWatch:
        self._thread.start()
        self.synced.wait(timeout)
        if self.error is not None and not self.synced.is_set():
            raise self.error
        return self

    def snapshot(self) -> list[dict[str, Any]]:
        with self.changed:
            return list(self.objects.values())

    def wait(self, timeout: float, seen: int | None = None) -> bool:
        with self.changed:
            start = self.version if seen is None else seen
            if self.version == start:
                self.changed.wait(timeout)
            return self.version != start

    def close(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
            with contextlib.suppress(Exception):
                response.release_conn()
        self._thread.join(2)

    # --- internals --------------------------------------------------------------------------
    def _bump(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change()

    def _list(self) -> str:
        objects: dict[str, dict[str, Any]] = {}
        token: str | None = None
        version = ""
        while True:
            answer = self.client.request("GET", self.path, query={
                "labelSelector": self.label_selector, "fieldSelector": self.field_selector,
                "limit": 2000, "continue": token})
            for item in answer.get("items") or []:
                objects[item["metadata"]["name"]] = item
            meta = answer.get("metadata") or {}
            version = meta.get("resourceVersion", version)
            token = meta.get("continue")
            if not token:
                break
        with self.changed:
            self.objects = objects
        self._bump()
        self.synced.set()
        return version

    def _watch(self, version: str) -> str | None:
        """Follow events from ``version``; returns the version to go on from (None: re-list)."""
        query = {k: v for k, v in {
            "watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS), "labelSelector": self.label_selector,
            "fieldSelector": self.field_selector}.items() if v}
        url_path = f"{self.path}?{urlencode(query)}"
        api = self.client.api
        _m, url, headers, _b, _p = api.param_serialize(method="GET", resource_path=url_path,
                                                      header_params={"Accept": "application/json"},
                                                      auth_settings=["BearerToken"])
        self.client.log.add("WATCH", self.path)
        with translating(self.client.server):
            response = api.call_api("GET", url, header_params=headers,
                                    _request_timeout=(5.0, WATCH_SECONDS + 30.0))
        raw = response.response
        self._response = raw
        if response.status >= 400:
            raw.release_conn()
            return None
        buffer = b""
        try:
            for chunk in raw.stream(64 * 1024, decode_content=True):
                if self._stop.is_set():
                    return version
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        return None  # 410 Gone and friends: start over from a list
                    meta = obj.get("metadata") or {}
                    version = meta.get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    with self.changed:
                        if kind == "DELETED":
                            self.objects.pop(meta.get("name", ""), None)
                        else:
                            self.objects[meta.get("name", "")] = obj
                    self._bump()
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                raw.release_conn()
        return version

    def _run(self) -> None:
        version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                failures = 0
            except BaseException as exc:  # the thread must not die: report and retry
                if self._stop.is_set():
                    return
                self.error = exc
                failures += 1
                log.debug("watch %s: %s", self.path, exc)
                version = None
                asked = getattr(exc, "retry_after", None)  # a throttling API server said how long
                self._stop.wait(asked if asked is not None else min(0.2 * 2 ** failures, 5.0))
