"""Kernel sources per backend (`cpu/`, ...), shipped inside the package as `pangu_ms.kernel_sources`
(see pyproject.toml); `pangu_ms.kernels.build` compiles them on first use. No Python code lives here."""
