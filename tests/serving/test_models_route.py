"""``/v1/models`` names the dtypes the guard computes in (chosen for the device unless ``--dtype`` says)."""

from __future__ import annotations

from serving_helpers import openai_client


def test_models_lists_the_served_name_and_its_compute_dtypes(local_server, local_guard):
    listed = openai_client(local_server).models.list().data
    assert [model.id for model in listed] == ["demo"]
    assert listed[0].model_extra["compute_dtypes"] == local_guard.compute_dtypes
    assert set(local_guard.compute_dtypes) == {"model", "modules"}
