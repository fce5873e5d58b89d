"""Active probes: small, safe kernels (PCIe bandwidth, launch latency and SM reach) run in a
short-lived child process, with their scheduling, duty cycle and safety gates."""
