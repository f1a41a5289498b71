"""Guarded generation: the plan from a request's verdicts, generation, streaming, the drop-in wrapper, the
answer monitor and unguarded generation of allowed text-only requests.

``generator`` (:class:`GuardedGenerator`) judges requests and answers them per the policy; ``plan`` turns
verdicts into what generation does and builds the one LLM input; ``streaming`` streams it; ``wrapped`` is the
drop-in ``generate(**processor(...))``; ``monitor`` judges the growing answer; ``plain`` generates without
the guard where a caller allowed it.
"""

from psaguard.generation.generator import (
    GuardedGenerator,
    ImagesInput,
    __getattr__,
    chat_token_ids,
    check_generate_kwargs,
    reserved_kwargs,
)

__all__ = ["GuardedGenerator", "ImagesInput", "chat_token_ids", "check_generate_kwargs", "reserved_kwargs"]
