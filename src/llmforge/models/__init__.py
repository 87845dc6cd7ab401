"""Models: families and presets, building and loading, attention for packed rows, LoRA."""
