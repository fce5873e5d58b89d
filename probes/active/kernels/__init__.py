"""Probe kernels and the code that runs them, inside short-lived child processes only."""
