"""Measurement sources: one module per vendor library, the host, probe kernels, simulation."""

# Installed, this folder is the package gpuprobe.probes (pyproject.toml maps it). Loaded under any
# other name (``python -m probes`` from the repository root) every module would load a
# second time beside the installed one, with a registry and state of its own: refuse.
if __name__ != "gpuprobe.probes":
    raise ImportError(f"{__name__} is gpuprobe's gpuprobe.probes and loads only under that name: "
                      "pip install . (or -e .), then run gpuprobe or python -m gpuprobe.daemon")

