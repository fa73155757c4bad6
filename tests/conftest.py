"""Shared fixtures: the tiny random model (no download) and the default model (embedded wheel)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny():
    from emolib.models import tiny_model

    model, tok = tiny_model(seed=0)
    return model, tok


@pytest.fixture(scope="session")
def smollm():
    from emolib.models import load_model

    return load_model("smollm2-135m-instruct")
