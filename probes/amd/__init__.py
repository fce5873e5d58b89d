"""AMD GPUs through amdsmi: telemetry, processes, slow calls and KFD events."""
