"""Released weights (safetensors), their sha256 manifest and model cards."""
