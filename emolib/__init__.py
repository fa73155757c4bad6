"""emolib: emotion vectors in open-weight language models (a reproduction of Sofroniew et al., 2026).

The core a newcomer needs is these names; everything else builds on them::

    import emolib
    model, tok, info = emolib.load_model()                                   # the embedded SmolLM2-135M
    pooled = emolib.pooled_means(model, tok, stories, start=50)              # capture: block outputs, pooled
    vec = emolib.compute_vectors(pooled.means, labels, pooled.layers, pooled.residual_norms)
    vec = vec.with_default_layer(20)                                          # the block to read and steer
    with vec.steer(model, "desperate - calm", 0.1):                           # steer, hooks gone after the block
        model.generate(**tok("I feel", return_tensors="pt"), max_new_tokens=20)
    trace = emolib.Monitor(vec).score(model, tok, [{"role": "user", "content": "..."}])  # monitor

Layers (a test keeps them so): the **core** modules (:mod:`~emolib.models`, :mod:`~emolib.capture`,
:mod:`~emolib.steering`, :mod:`~emolib.vectors`, :mod:`~emolib.chat`, :mod:`~emolib.stats`,
:mod:`~emolib.emotions`) import only each other; :mod:`emolib.monitor` builds on the core;
:mod:`emolib.engines` runs units of work (in-process, Ray, vLLM) and needs only the core;
:mod:`emolib.study` holds one module per notebook stage and may use all of those;
:mod:`emolib.teaching` builds the classroom assignment; :mod:`emolib.pipeline` runs the notebooks.
docs/api.md is the one-page reference of the names below.
"""

from emolib.capture import pooled_means, record_residual, token_activations
from emolib.chat import encode_chat, format_user_turn
from emolib.emotions import all_emotions
from emolib.models import load_model
from emolib.monitor import Monitor
from emolib.steering import Steering, assert_no_hooks, steer
from emolib.vectors import EmotionVectors, compute_vectors, fit_neutral_pca
from emolib.version import __version__ as __version__

__all__ = [
    "EmotionVectors",
    "Monitor",
    "Steering",
    "all_emotions",
    "assert_no_hooks",
    "compute_vectors",
    "encode_chat",
    "fit_neutral_pca",
    "format_user_turn",
    "load_model",
    "pooled_means",
    "record_residual",
    "steer",
    "token_activations",
]
