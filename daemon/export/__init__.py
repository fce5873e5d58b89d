"""Export: the metric catalogue (every metric's name, help, labels and the extractor that
reads it from the snapshot), the Prometheus collector over the snapshot, the text encoding."""
