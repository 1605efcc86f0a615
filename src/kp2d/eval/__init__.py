"""HPatches evaluation: the protocol's metrics, the detector adapters and the evaluation loop."""
