"""Building the C++ kernel library on first use.

The sources ship inside the package: the top-level `kernels/` folder of the repository is
mapped to `pangu_ms.kernel_sources` (`pyproject.toml`), so an editable checkout and an
installed wheel find them the same way, through `importlib.resources`. The library is
compiled with g++ once per source version and flag set into a user cache directory,
`$PANGU_MS_KERNEL_DIR` if set, else `$XDG_CACHE_HOME/pangu_ms/kernels` (default
`~/.cache/pangu_ms/kernels`), never into the checkout or site-packages. When the CPU,
the compiler or the source is missing, `cpu_kernel_library()` returns None and logs why
once; callers then run the reference compositions.

Two libraries: the decode kernels (`cpu/gemv_avx2.cc`, `cpu_kernel_library()`) and the training
kernels (`cpu/training.cc` and the headers next to it, `cpu_training_library()`), which hold an
AVX2 and an AVX-512 copy of every kernel; `training_isa()` says which copy this process runs.
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
TRAINING_SOURCE = "cpu/training.cc"
# hidden visibility: only the kernels' entry points are exported, so nothing of one ISA's copy
# can bind to the other's; the AVX-512 copy gets its target from a pragma inside the source
_TRAINING_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-shared", "-fPIC", "-std=c++17", "-pthread",
                   "-fvisibility=hidden", "-fno-math-errno"]
ISA_ENV = "PANGU_MS_CPU_ISA"
"""`auto` (the default), `avx2` or `avx512`: which copy of the training kernels to run."""
_TRAINING_NEEDS = {"avx2", "fma", "f16c"}
_AVX512_NEEDS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


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


def build_library(source: Path, out_dir: Path, flags: list[str], *, headers: tuple[Path, ...] = ()) -> Path:
    """Compile `source` into out_dir/<stem>_<hash>.so (atomic rename: safe across processes);
    the hash covers the source, the `headers` it includes and the flags."""
    content = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(headers))
    digest = hashlib.sha1(content + " ".join(flags).encode()).hexdigest()[:12]
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


def training_isa() -> str:
    """The training kernels' code path for this process: "avx512" where the CPU has AVX-512
    (F, BW, VL, DQ), else "avx2"; `$PANGU_MS_CPU_ISA` = avx2 forces the AVX2 path (to test it on
    an AVX-512 machine). Raises ValueError for another value, or avx512 on a CPU without it."""
    want = os.environ.get(ISA_ENV, "auto").strip().lower() or "auto"
    has_512 = _AVX512_NEEDS <= cpu_features()
    if want == "auto":
        return "avx512" if has_512 else "avx2"
    if want == "avx2":
        return "avx2"
    if want == "avx512":
        if not has_512:
            raise ValueError(f"{ISA_ENV}=avx512, but this CPU lacks {sorted(_AVX512_NEEDS - cpu_features())}: "
                             f"unset {ISA_ENV} or set it to avx2")
        return "avx512"
    raise ValueError(f"{ISA_ENV}={want!r} is not one of auto, avx2, avx512: fix or unset it")


def isa_supported(isa: str) -> bool:
    """True if this CPU can run the training kernels' `isa` copy ("avx2" or "avx512")."""
    needs = {"avx2": _TRAINING_NEEDS, "avx512": _TRAINING_NEEDS | _AVX512_NEEDS}
    if isa not in needs:
        raise ValueError(f"isa={isa!r} is not one of avx2, avx512")
    return needs[isa] <= cpu_features()


@functools.lru_cache(maxsize=None)
def cpu_training_library() -> str | None:
    """Path of the compiled training-kernel library (built on first call), or None (with one
    warning naming the reason) when this install, CPU or compiler cannot provide it."""
    source = kernel_source(TRAINING_SOURCE)
    if source is None:
        log.warning("fused CPU training kernels off: %s is not in this install (reference compositions used)",
                    TRAINING_SOURCE)
        return None
    missing = _TRAINING_NEEDS - cpu_features()
    if missing:
        log.warning("fused CPU training kernels off: this CPU lacks %s (reference compositions used)",
                    ", ".join(sorted(missing)))
        return None
    try:
        return str(build_library(source, kernel_dir(), _TRAINING_FLAGS, headers=tuple(source.parent.glob("train_*.h"))))
    except (OSError, RuntimeError) as e:
        log.warning("fused CPU training kernels off: could not build %s (%s); reference compositions used", source, e)
        return None
