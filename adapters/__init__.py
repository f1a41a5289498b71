"""LangChain adapters for psaguard (needs the `langchain` extra)."""

__all__: list[str] = []
