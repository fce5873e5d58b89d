"""The core every layer may use: the vendor-neutral model (samples, results, the snapshot
store and its read-only view), config types and parsing, the collector table and protocol,
device worker threads and the child-process environment. Imports nothing else of gpuprobe."""
