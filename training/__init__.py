"""Two-stage PSA-VLM trainer (needs the `train` extra)."""

__all__: list[str] = []
