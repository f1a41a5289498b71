"""The response side: judging a model's answer with the guard's own modules (see docs/responses.md).

``policy`` holds what an answer's verdict leads to (torch-free, beside the request policy), ``cache`` the
response head made incremental for the streaming monitor, ``judge`` the classifier's response side over its
vision pass. Import from the modules; the package itself imports none, so the request policy can read
``psaguard.responses.policy`` without loading the judge.
"""

__all__: list[str] = []
