"""gpuprobe's daemon, in layers (docs/architecture.md): core/ (the model, state, config and
collector table every layer uses), analysis/ (the leak detector), export/ (the metric
catalogue and exporter) and, on top, service/ (wiring, scheduler, HTTP, CLI)."""

# Installed, this folder is the package gpuprobe.daemon (pyproject.toml maps it). Loaded under any
# other name (``python -m daemon`` from the repository root) every module would load a
# second time beside the installed one, with state of its own (a second store, config
# types that fail isinstance against the first): refuse.
if __name__ != "gpuprobe.daemon":
    raise ImportError(f"{__name__} is gpuprobe's gpuprobe.daemon and loads only under that name: "
                      "pip install . (or -e .), then run gpuprobe or python -m gpuprobe.daemon")

