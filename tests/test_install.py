"""A non-editable install carries what the package reads from the repository's folders.

Builds a wheel from the checkout, checks what it holds (kernel sources, the built-in configs,
every subpackage of the tree), installs it without `-e` into a fresh virtual environment (the
dependencies come from this venv through a path entry, so nothing is downloaded) and runs the
kernel tests, the fused-model tests (`model.kernels: fused` must get the C++ training kernels
and equal the reference) and the task tests there against the installed copy, with the kernels
compiled afresh from the wheel's sources into an empty cache.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy without the editable install's egg-info: its SOURCES.txt would carry
    # files into the wheel that pyproject.toml's package list leaves out on a clean checkout
    src = tmp_path_factory.mktemp("src") / "tree"
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache")

    def ignore(folder, names):
        top = {".git", ".venv", "build", "runs"} if Path(folder) == ROOT else set()
        return set(skip(folder, names)) | (top & set(names))

    shutil.copytree(ROOT, src, ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (whl,) = out.glob("pangu_ms-*.whl")
    return whl


def test_wheel_carries_kernel_sources_configs_and_every_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT / "kernels").as_posix() for p in (ROOT / "kernels").rglob("*.cc")}
    assert sources and {f"pangu_ms/kernel_sources/{s}" for s in sources} <= names
    configs = {p.relative_to(ROOT / "ascend_configs").as_posix() for p in (ROOT / "ascend_configs").rglob("*.yaml")}
    assert "tasks/sentiment.yaml" in configs
    assert {f"pangu_ms/ascend_configs/{c}" for c in configs} <= names
    # every folder holding Python, with or without __init__.py (a namespace folder such as
    # models/ is just as easily left out of pyproject.toml's explicit list)
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "pangu_ms").rglob("*.py")
               if "__pycache__" not in p.parts]
    missing = sorted(m for m in modules if m not in names)
    assert not missing, f"modules missing from the wheel (add their folders to pyproject.toml's packages): {missing}"


def test_installed_package_passes_the_kernel_and_task_tests(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (mindspore, pytest, ...) from this venv, after the new venv's own site-packages
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PANGU_MS_KERNEL_DIR": str(tmp_path / "kernel_cache"), "GLOG_v": "3",
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    where = subprocess.run([str(py), "-P", "-c", "import pangu_ms, pangu_ms.kernels.build as b; "
                            "print(pangu_ms.__file__); print(b.kernel_source(b.CPU_SOURCE))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.split()
    assert all(w.startswith(str(site)) for w in where), where  # the installed copy, not the checkout
    run = subprocess.run([str(py), "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                          str(ROOT / "tests" / "kernels"), str(ROOT / "tests" / "models" / "test_models_fused.py"),
                          f"{ROOT / 'tests' / 'eval' / 'test_eval_scoring.py'}::test_task_yaml_and_errors"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    built = {p.name.split("_")[0] for p in (tmp_path / "kernel_cache").glob("*.so")}
    assert {"gemv", "training"} <= built, f"kernels not built from the installed sources: {built}"
