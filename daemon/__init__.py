"""The gpuprobe service: config, scheduler, state, exporter, HTTP and CLI."""

# Installed, this folder is the package gpuprobe.daemon (pyproject.toml maps it). Loaded under any
# other name (``python -m daemon`` from the repository root) every module would load a
# second time beside the installed one, with a registry and state of its own: refuse.
if __name__ != "gpuprobe.daemon":
    raise ImportError(f"{__name__} is gpuprobe's gpuprobe.daemon and loads only under that name: "
                      "pip install . (or -e .), then run gpuprobe or python -m gpuprobe.daemon")

