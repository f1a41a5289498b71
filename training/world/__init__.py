"""Synthetic safety world: generated concept images, prompts and responses to train and test a guard."""

__all__: list[str] = []
