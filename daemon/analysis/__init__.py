"""Analysis over recorded data only (the published snapshot), never a vendor library: the
memory-leak detector and the collector that runs it."""
