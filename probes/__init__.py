"""Measurement sources: one module per vendor library, the host, probe kernels, simulation."""
