"""NVIDIA GPUs through NVML (pynvml): telemetry, processes and XID events."""
