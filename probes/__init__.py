"""The measurement sources, on the core only: nvidia/ (NVML), amd/ (amdsmi), backend/ (what
both vendor backends share), host.py (the /proc reader), active/ (the active probes and
their kernels), sim/ (the simulated libraries under --simulate and the tests)."""

# Installed, this folder is the package gpuprobe.probes (pyproject.toml maps it). Loaded under any
# other name (``python -m probes`` from the repository root) every module would load a
# second time beside the installed one, with state of its own (a second store, config
# types that fail isinstance against the first): refuse.
if __name__ != "gpuprobe.probes":
    raise ImportError(f"{__name__} is gpuprobe's gpuprobe.probes and loads only under that name: "
                      "pip install . (or -e .), then run gpuprobe or python -m gpuprobe.daemon")

