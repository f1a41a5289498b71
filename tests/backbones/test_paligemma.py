"""PaliGemma: no adapter yet. The shared bar runs on its tiny model as expected failures, for the reasons below.

What an adapter needs that the family API does not give yet:

* prefix-LM attention: ``token_type_ids`` are 0 over the prompt (bidirectional) and 1 over the answer; in
  training the answer's positions come from the labels, which ``Backbone.model_image_inputs`` does not see
  (it gets the features and ``input_ids`` only), so Stage II would let the answer attend to itself ahead;
* the prompt layout is the processor's, not a chat template's: image tokens first, then BOS, the text and a
  newline; released checkpoints have no chat template for guarded ``generate`` to render.
"""

from __future__ import annotations

import pytest
from family_conformance import FamilyConformance, TinyFamily
from transformers import AutoProcessor

from psaguard.backbones import Backbone
from psaguard.errors import UnsupportedModelError
from psaguard.testing import save_tiny_family

REASON = (
    "no PaliGemma adapter: prefix-LM token_type_ids need the training labels, which model_image_inputs does not "
    "receive, and the processor's prompt layout (images, BOS, text, newline) has no chat template"
)


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    path = save_tiny_family("paligemma", tmp_path_factory.mktemp("paligemma"))
    return TinyFamily.load(path, AutoProcessor, Backbone, Backbone)


@pytest.mark.xfail(raises=UnsupportedModelError, reason=REASON, strict=True)
class TestPaliGemma(FamilyConformance):
    """Everything every family adapter does; PaliGemma is refused with UnsupportedModelError until it has one."""
