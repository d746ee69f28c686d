"""Build the Go programs of the test control plane once, and find them afterwards.

No prebuilt Kubernetes binaries can be downloaded, so etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kubectl and kwok are compiled from the Go module proxy;
so are kubelet, containerd (+ ctr, containerd-shim-runc-v2) and crictl for real nodes.
Each component has a small wrapper module under ``edgekit/rehearsal/go/<component>/`` whose
committed ``go.mod``/``go.sum`` pin the exact version; the binaries land in
``~/.cache/edgekit/<component>-<version>/`` and are reused while the pinned modules are unchanged.

    python -m edgekit.rehearsal.gobuild            # build what is missing (scripts/build-go-tools)
    python -m edgekit.rehearsal.gobuild --status   # show where each binary is, build nothing
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ConfigError, EdgekitError
from edgekit.settings import cache_dir

GO_DIR = Path(__file__).parent / "go"
_STAMP = ".edgekit-build"


class GoBuildError(EdgekitError):
    """The Go toolchain is missing or a build failed."""

    exit_code = 71


cache_root = cache_dir


@dataclass(frozen=True)
class Component:
    """One wrapper module and the programs built from it."""

    name: str
    module: str  # the pinned upstream module, its version read from go.mod
    packages: tuple[str, ...]  # Go packages to build; binary name = last path element
    binaries: tuple[str, ...]
    tags: tuple[str, ...] = ()  # Go build tags

    @property
    def module_dir(self) -> Path:
        return GO_DIR / self.name

    @property
    def version(self) -> str:
        text = (self.module_dir / "go.mod").read_text()
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(self.module)}\s+(v\S+)", text, re.M)
        if not match:
            raise ConfigError(f"{self.module_dir / 'go.mod'} does not pin {self.module}")
        return match.group(1)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for fname in ("go.mod", "go.sum"):
            digest.update((self.module_dir / fname).read_bytes())
        return digest.hexdigest()[:16]

    @property
    def out_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    def ldflags(self) -> str:
        version = self.version
        flags = ["-s", "-w"]
        if self.name in ("k8s", "kubelet"):
            major, minor = version.lstrip("v").split(".")[:2]
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}",
                          f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean",
                          f"-X {pkg}.buildDate=1970-01-01T00:00:00Z"]
        elif self.name == "etcd":
            flags.append(f"-X go.etcd.io/etcd/api/v3/version.GitSHA={version}")
        elif self.name == "kwok":
            flags.append(f"-X sigs.k8s.io/kwok/pkg/consts.Version={version.lstrip('v')}")
        elif self.name == "cosign":
            flags.append(f"-X sigs.k8s.io/release-utils/version.gitVersion={version}")
        elif self.name == "crictl":
            flags.append(f"-X sigs.k8s.io/cri-tools/pkg/version.Version={version.lstrip('v')}")
        elif self.name == "containerd":
            flags.append(f"-X github.com/containerd/containerd/v2/version.Version={version}")
        return " ".join(flags)

    def is_built(self) -> bool:
        out = self.out_dir
        stamp = out / _STAMP
        if not stamp.is_file() or stamp.read_text().strip() != self.fingerprint:
            return False
        return all(os.access(out / b, os.X_OK) for b in self.binaries)


COMPONENTS: dict[str, Component] = {
    "etcd": Component("etcd", "go.etcd.io/etcd/server/v3", ("go.etcd.io/etcd/server/v3",), ("etcd",)),
    "k8s": Component(
        "k8s", "k8s.io/kubernetes",
        tuple(f"k8s.io/kubernetes/cmd/{b}" for b in
              ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")),
        ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
    ),
    "kwok": Component("kwok", "sigs.k8s.io/kwok", ("sigs.k8s.io/kwok/cmd/kwok",), ("kwok",)),
    # For the model-image signature interop tests (edgekit signs, cosign verifies, and back).
    "cosign": Component("cosign", "github.com/sigstore/cosign/v2",
                        ("github.com/sigstore/cosign/v2/cmd/cosign",), ("cosign",)),
}

# The real nodes of `edgekit dev cluster up --real-nodes N`: built only when real nodes are asked
# for, so KWOK-only runs never wait for them. The kubelet module pins the same k8s.io/kubernetes
# version and replaces as the control plane's, so the Go build cache is shared and warm.
NODE_COMPONENTS: dict[str, Component] = {
    "kubelet": Component("kubelet", "k8s.io/kubernetes", ("k8s.io/kubernetes/cmd/kubelet",), ("kubelet",)),
    # Static (CGO off) and without the snapshotters that need cgo or kernel extras.
    "containerd": Component(
        "containerd", "github.com/containerd/containerd/v2",
        tuple(f"github.com/containerd/containerd/v2/cmd/{b}" for b in ("containerd", "ctr", "containerd-shim-runc-v2")),
        ("containerd", "ctr", "containerd-shim-runc-v2"),
        tags=("no_btrfs", "no_devmapper", "no_zfs"),
    ),
    # `down` stops pod sandboxes through the CRI so the CNI plugins undo their interfaces and rules.
    "crictl": Component("crictl", "sigs.k8s.io/cri-tools", ("sigs.k8s.io/cri-tools/cmd/crictl",), ("crictl",)),
}

ALL_COMPONENTS: dict[str, Component] = {**COMPONENTS, **NODE_COMPONENTS}
BINARY_COMPONENT = {b: c for c in ALL_COMPONENTS.values() for b in c.binaries}


def binary(name: str) -> Path:
    """Path of a built program (``etcd``, ``kube-apiserver``, ``kubectl``, ``kwok``, ...).

    Raises GoBuildError with the command to run when it has not been built yet.
    """
    try:
        comp = BINARY_COMPONENT[name]
    except KeyError:
        raise ConfigError(f"unknown test binary {name!r}") from None
    if env := os.environ.get(f"EDGEKIT_{name.upper().replace('-', '_')}_BIN"):
        return Path(env)
    if not comp.is_built():
        raise GoBuildError(f"{name} {comp.version} is not built in {comp.out_dir}",
                           hint="run scripts/build-go-tools (first build takes 10-30 minutes)")
    return comp.out_dir / name


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not go:
        raise GoBuildError("the go command is not installed",
                           hint="install Go >= 1.26 (https://go.dev/doc/install) and put it on PATH")
    return go


def build(comp: Component, *, jobs: int = 2, say: Callable[[str], None] = print) -> Path:
    """Build one component unless its binaries for the pinned version already exist."""
    with _lock(cache_root() / f".{comp.name}.lock"):
        if comp.is_built():
            say(f"==> {comp.name} {comp.version}: cached in {comp.out_dir}")
            return comp.out_dir
        out, tmp = comp.out_dir, comp.out_dir.with_name(comp.out_dir.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        log = cache_root() / "logs" / f"build-{comp.name}-{comp.version}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=readonly -buildvcs=false")
        # Debian/Ubuntu-style `nice` keeps the machine responsive during the long first build.
        argv = ["nice", "-n", "10", _go(), "build", "-trimpath", "-p", str(jobs),
                "-ldflags", comp.ldflags()]
        if comp.tags:
            argv += ["-tags", ",".join(comp.tags)]
        if len(comp.packages) == 1:
            argv += ["-o", str(tmp / comp.binaries[0]), comp.packages[0]]
        else:
            argv += ["-o", str(tmp) + "/", *comp.packages]
        say(f"==> building {comp.name} {comp.version} ({', '.join(comp.binaries)}) into {out}; "
            f"the first build takes a while (k8s: 10-30 min on 2 cores), log: {log}")
        start = time.monotonic()
        with open(log, "wb") as handle:
            proc = subprocess.Popen(argv, cwd=comp.module_dir, env=env, stdout=handle,
                                    stderr=subprocess.STDOUT)
            last = start
            while proc.poll() is None:
                time.sleep(1)
                if time.monotonic() - last >= 60:
                    last = time.monotonic()
                    say(f"    ... still building {comp.name} ({last - start:.0f}s)")
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise GoBuildError(f"building {comp.name} {comp.version} failed (exit {proc.returncode}); "
                               f"log {log}:\n{tail}")
        seconds = time.monotonic() - start
        (tmp / _STAMP).write_text(comp.fingerprint + "\n")
        (tmp / "build.json").write_text(json.dumps({
            "component": comp.name, "version": comp.version, "seconds": round(seconds, 1), "jobs": jobs,
            "go": subprocess.run([_go(), "env", "GOVERSION"], capture_output=True, text=True).stdout.strip(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        say(f"==> built {comp.name} {comp.version} in {seconds:.0f}s")
        return out


def build_record(comp: Component) -> dict[str, object] | None:
    """What the last build of ``comp`` recorded (duration, Go version), if anything."""
    try:
        data = json.loads((comp.out_dir / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-go-tools", description=__doc__.split("\n\n")[0])
    parser.add_argument("components", nargs="*", metavar="COMPONENT",
                        help=f"components to build: {', '.join(ALL_COMPONENTS)} (default: all)")
    parser.add_argument("--status", action="store_true", help="only show what is built")
    parser.add_argument("-p", "--jobs", type=int, default=2, help="parallel Go compile jobs (default 2)")
    args = parser.parse_args(argv)
    names = args.components or list(ALL_COMPONENTS)
    if unknown := [n for n in names if n not in ALL_COMPONENTS]:
        parser.error(f"unknown component(s): {', '.join(unknown)}")
    try:
        for name in names:
            comp = ALL_COMPONENTS[name]
            if args.status:
                state = "built" if comp.is_built() else "missing"
                print(f"{name:10} {comp.version:9} {state:8} {comp.out_dir}")
            else:
                build(comp, jobs=args.jobs, say=lambda m: print(m, flush=True))
    except EdgekitError as exc:
        print(f"build-go-tools: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
