"""The service on top: the app that wires collectors to their sources, the scheduler, the
HTTP server and its web config, systemd notification and the command line."""
