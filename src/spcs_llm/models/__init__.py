"""The model catalogue and the packaged default model."""
