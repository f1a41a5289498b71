"""Scale-out on Ray Serve: the same app, one guard (and batcher) per replica (``pip install 'ray[serve]'``).

    from psaguard.serving.ray_serve import ReplicaSpec, build_application
    from ray import serve
    serve.run(build_application(ReplicaSpec(guard_dir=..., model=..., num_replicas=4, num_gpus=1)))

or from Ray's CLI (arguments are :class:`ReplicaSpec` fields; a Serve config YAML can set ``config`` too):

    serve run psaguard.serving.ray_serve:app_builder guard_dir=/guards/g model=/models/m num_replicas=2

Each replica loads its own guard when it starts (models are not pickled across the cluster) and serves
the full app: Ray's proxy spreads requests over the replicas, and each replica batches what it receives.
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.deployment import Application

from psaguard.serving.app import create_app
from psaguard.serving.auth import load_api_keys
from psaguard.serving.config import ServeConfig
from psaguard.serving.server import load_guard

__all__ = ["GuardReplica", "ReplicaSpec", "app_builder", "build_application"]


class ReplicaSpec(BaseModel):
    """What each replica loads and the resources Ray gives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    guard_dir: str = Field(description="Saved guard directory (or hub id), readable from every node.")
    model: str = Field(description="Base model directory or hub id (the --base checkpoint when classifier_only).")
    classifier_only: bool = Field(False, description="Load only the classifier parts (proxy or moderation only).")
    config: ServeConfig = Field(default_factory=ServeConfig, description="The app's settings, the same everywhere.")
    api_key_file: str | None = Field(None, description="File of accepted API keys, read by each replica.")
    name: str = Field("psaguard", description="Name of the Ray Serve deployment.")
    num_replicas: int = Field(1, ge=1, description="Replicas, each with its own guard.")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs Ray reserves per replica.")
    num_gpus: float = Field(
        0.0, ge=0.0, description="GPUs per replica (1 = one whole GPU; Ray sets CUDA_VISIBLE_DEVICES)."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica holds at once; keep it above max_batch so batches can fill."
    )


class GuardReplica:
    """One Ray Serve replica: loads the guard on its device, then serves :func:`create_app`'s app."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Runs in the replica's process, where only the GPUs Ray assigned to it are visible.
        device = "cuda" if self.spec.num_gpus > 0 and torch.cuda.is_available() else None
        guard = load_guard(
            self.spec.guard_dir, self.spec.model, classifier_only=self.spec.classifier_only, device=device
        )
        return create_app(guard, self.spec.config, api_keys=load_api_keys(self.spec.api_key_file))


def build_application(spec: ReplicaSpec, **deployment_options: Any) -> Application:
    """The Ray Serve application of ``spec`` (pass it to ``serve.run``); extra options go to ``serve.deployment``."""
    deployment = serve.deployment(
        serve.ingress()(GuardReplica),
        name=spec.name,
        num_replicas=spec.num_replicas,
        ray_actor_options={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
        max_ongoing_requests=spec.max_ongoing_requests,
        **deployment_options,
    )
    return deployment.bind(spec)


def app_builder(args: dict[str, Any]) -> Application:
    """Ray Serve's application-builder entry point: ``args`` are :class:`ReplicaSpec` fields."""
    return build_application(ReplicaSpec.model_validate(args))
