"""Build and load the compiled replay kernel (``_replay_kernel.c``) with the machine's compiler.

No new dependency: the C source is compiled at first use with the C compiler the machine
has (``$FEDTUNE_CC``, else ``$CC``, else ``cc``) as ``-O3 -march=native -pthread`` (never
``-ffast-math``: the kernel's additions must stay IEEE's), into a cache directory outside
the repository (``$FEDTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedtune``, else
``~/.cache/fedtune``), and loaded with :mod:`ctypes`, so the same shared object serves torch
tensors and the torch-free numpy device path alike. The file name hashes the source, the
compiler, the flags and the CPU, so an edit, another compiler or another machine sharing
the home directory gets its own build, never a stale or foreign one.

This module only builds and loads; :mod:`fedtune.rng` checks the loaded kernel against the
pinned stream vectors and the pure-numpy path before using it, and owns the fallback and its
one warning. It imports nothing from fedtune.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DTYPE_CODES", "ENV_CC", "ENV_MODE", "Kernel", "KernelUnavailable", "build", "cache_dir", "target_path",
]

ENV_MODE = "FEDTUNE_REPLAY_KERNEL"
"""``fallback`` forces the pure numpy/torch path; ``auto`` (default) builds and uses the kernel."""
ENV_CC = "FEDTUNE_CC"
"""The C compiler to build the kernel with (default ``$CC``, else ``cc``)."""
ENV_CACHE = "FEDTUNE_CACHE_DIR"

SOURCE = Path(__file__).with_name("_replay_kernel.c")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-fno-fast-math", "-ffp-contract=off")
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}  # bfloat16: ml_dtypes'
"""The kernel's element types, by numpy dtype name."""


class KernelUnavailable(RuntimeError):
    """The kernel could not be built or loaded; the message says why."""


def cache_dir() -> Path:
    """Where built kernels live: ``$FEDTUNE_CACHE_DIR``, ``$XDG_CACHE_HOME/fedtune`` or ``~/.cache/fedtune``."""
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fedtune"


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in info if line.split(":")[0].strip() in wanted}))


def _compiler() -> str:
    return os.environ.get(ENV_CC) or os.environ.get("CC") or "cc"


@dataclass(frozen=True)
class Kernel:
    """A loaded kernel: ``fn`` is ``fedtune_replay`` (see the C source for its arguments),
    ``simd`` whether it was built with AVX2 + F16C (else the portable C loop)."""

    path: Path
    simd: bool
    fn: ctypes._CFuncPtr  # type: ignore[name-defined]
    probe: ctypes._CFuncPtr  # type: ignore[name-defined]

    def add_rate(self, threads: int, iterations: int = 20_000_000) -> float:
        """float32 additions per second this build issues on ``threads`` threads, in
        registers (no loads, stores or sign expansion): the floor any replay is held to."""
        return float(self.probe(iterations, threads))


def target_path() -> Path:
    """Where this source, compiler, flags and CPU's build lives (built or not).

    Raises:
        KernelUnavailable: no compiler.
    """
    cc = _compiler()
    cc_path = shutil.which(cc)
    if cc_path is None:
        raise KernelUnavailable(f"no C compiler: {cc!r} not found (set ${ENV_CC} or $CC)")
    tag = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), cc_path.encode(), " ".join(FLAGS).encode(),
                    _cpu_identity().encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    return cache_dir() / f"replay-kernel-{tag}.so"


def build() -> Kernel:
    """Build (once per source, compiler, flags and CPU) and load the kernel.

    A build is written under a private name and renamed into place, never rewritten in
    place: a process that has the library loaded keeps a valid mapping.

    Raises:
        KernelUnavailable: no compiler, a failed compile, or a library that will not load.
    """
    cc = _compiler()
    target = target_path()
    cc_path = shutil.which(cc) or cc
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Compile to a private name, then rename: parallel processes (simulation
            # workers) may build at once; each rename is atomic and the results identical.
            fd, tmp = tempfile.mkstemp(prefix=".replay-kernel-", suffix=".so", dir=target.parent)
            os.close(fd)
        except OSError as exc:
            raise KernelUnavailable(f"cannot write the build to {target.parent}: {exc}") from exc
        try:
            done = subprocess.run([cc_path, *FLAGS, str(SOURCE), "-o", tmp],
                                  check=False, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise KernelUnavailable(f"{cc} failed (exit {done.returncode}): {' | '.join(tail)}")
            os.replace(tmp, target)
        except (OSError, subprocess.SubprocessError) as exc:
            raise KernelUnavailable(f"{cc} could not run: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        lib = ctypes.CDLL(str(target))
        fn = lib.fedtune_replay
        probe = lib.fedtune_add_rate
        simd = bool(lib.fedtune_replay_simd())
    except (OSError, AttributeError) as exc:
        raise KernelUnavailable(f"cannot load {target} (delete it to rebuild): {exc}") from exc
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]
    probe.restype = ctypes.c_double
    probe.argtypes = [ctypes.c_int64, ctypes.c_int]
    return Kernel(path=target, simd=simd, fn=fn, probe=probe)
