"""Which kubeconfig a command uses when none is given: flag > $KUBECONFIG > ~/.kube/config > the
dev cluster's well-known kubeconfig (no cluster needed: these only look at files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.kube.kubeconfigs import dev_cluster_dir, dev_cluster_kubeconfig, find_kubeconfig


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home: no ~/.kube/config, no $KUBECONFIG, caches under the home."""
    for var in ("KUBECONFIG", "EDGEKIT_DEV_DIR", "EDGEKIT_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_dev_cluster_dir_follows_the_cache_settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dev_cluster_kubeconfig() == home / ".cache" / "edgekit" / "dev" / "kubeconfig"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg"))
    assert dev_cluster_dir() == home / "xdg" / "edgekit" / "dev"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(home / "cache"))
    assert dev_cluster_dir() == home / "cache" / "dev"
    monkeypatch.setenv("EDGEKIT_DEV_DIR", str(home / "devdir"))
    assert dev_cluster_kubeconfig() == home / "devdir" / "kubeconfig"


def test_no_kubeconfig_anywhere_says_what_to_do(home: Path) -> None:
    with pytest.raises(ConfigError, match="no kubeconfig: pass --kubeconfig, set KUBECONFIG, or start"):
        find_kubeconfig(None)


def test_the_dev_cluster_kubeconfig_is_the_last_resort(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = dev_cluster_kubeconfig()
    dev.parent.mkdir(parents=True)
    dev.write_text("apiVersion: v1\n")
    assert find_kubeconfig(None) == dev
    flag = home / "flag.kubeconfig"
    assert find_kubeconfig(flag) == flag  # the flag wins, even over a file that is not there yet
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text("apiVersion: v1\n")
    assert find_kubeconfig(None) is None  # the kubernetes client reads ~/.kube/config itself
    (home / ".kube" / "config").unlink()
    monkeypatch.setenv("KUBECONFIG", str(home / "env.kubeconfig"))
    assert find_kubeconfig(None) is None  # ... and $KUBECONFIG
