"""Building the C++ kernel library on first use.

The sources ship inside the package: the top-level `kernels/` folder of the repository is
mapped to `pangu_ms.kernel_sources` (`pyproject.toml`), so an editable checkout and an
installed wheel find them the same way, through `importlib.resources`. The library is
compiled with g++ once per source version and flag set into a user cache directory,
`$PANGU_MS_KERNEL_DIR` if set, else `$XDG_CACHE_HOME/pangu_ms/kernels` (default
`~/.cache/pangu_ms/kernels`), never into the checkout or site-packages. When the CPU,
the compiler or the source is missing, `cpu_kernel_library()` returns None and logs why
once; callers then run the reference compositions.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_PACKAGE = "pangu_ms.kernel_sources"
CPU_SOURCE = "cpu/gemv_avx2.cc"
KERNEL_DIR_ENV = "PANGU_MS_KERNEL_DIR"
_FLAGS = ["-O3", "-mavx2", "-mfma", "-shared", "-fPIC", "-std=c++17"]


def kernel_dir() -> Path:
    """Where compiled kernel libraries are cached (see the module docstring)."""
    if os.environ.get(KERNEL_DIR_ENV):
        return Path(os.environ[KERNEL_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pangu_ms" / "kernels"


def kernel_source(rel: str) -> Path | None:
    """Path of a kernel source shipped with the package, or None if this install lacks it."""
    try:
        path = Path(str(importlib.resources.files(SOURCE_PACKAGE).joinpath(rel)))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def cpu_features() -> set[str]:
    """The x86 feature flags of this CPU (empty elsewhere or when /proc/cpuinfo is unreadable)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def build_library(source: Path, out_dir: Path, flags: list[str]) -> Path:
    """Compile `source` into out_dir/<stem>_<hash>.so (atomic rename: safe across processes)."""
    digest = hashlib.sha1(source.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    target = out_dir / f"{source.stem}_{digest}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++ or c++) on PATH")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, "-o", tmp, str(source)], check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{compiler} failed: {e.stderr.strip()[-500:]}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@functools.lru_cache(maxsize=None)
def cpu_kernel_library() -> str | None:
    """Path of the compiled decode-kernel library (built on first call), or None when unavailable."""
    source = kernel_source(CPU_SOURCE)
    if source is None:
        log.warning("fused CPU kernels off: %s is not in this install (reference kernels used)", CPU_SOURCE)
        return None
    if not {"avx2", "fma"} <= cpu_features():
        log.warning("fused CPU kernels off: this CPU has no AVX2+FMA (reference kernels used)")
        return None
    try:
        return str(build_library(source, kernel_dir(), _FLAGS))
    except (OSError, RuntimeError) as e:
        log.warning("fused CPU kernels off: could not build %s (%s); reference kernels used", source, e)
        return None
