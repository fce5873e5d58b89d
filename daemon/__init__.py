"""The gpuprobe service: config, scheduler, state, exporter, HTTP and CLI."""
