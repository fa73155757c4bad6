"""emolib: emotion vectors in open-weight language models (a reproduction of Sofroniew et al., 2026).

The library holds what the notebooks call: model loading (:mod:`emolib.models`), residual-stream
capture (:mod:`emolib.capture`), the ``EmotionVectors`` artifact (:mod:`emolib.vectors`), steering
(:mod:`emolib.steering`) and the run-folder/pipeline machinery (:mod:`emolib.runs`,
:mod:`emolib.pipeline`).
"""

__version__ = "0.1.0"
