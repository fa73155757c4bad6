"""The study: one module per notebook stage, and the helpers they share. Built on the core.

=====  ===========================================================================================
stage  modules
=====  ===========================================================================================
01     :mod:`~emolib.study.generation` (prompts, writing, the story store),
       :mod:`~emolib.study.texts` (leakage and quality checks), :mod:`~emolib.study.corpus`
       (corpora on disk; the reference corpus's design and gates)
02     :mod:`~emolib.study.activations` (pooling a corpus, resumable shards),
       :mod:`~emolib.study.layer_sweep` (held-out classification per layer; choosing the layer)
03     :mod:`~emolib.study.readout` (reading probes at chosen tokens), :mod:`~emolib.study.logit_lens`,
       :mod:`~emolib.study.implicit` (implicit scenarios), :mod:`~emolib.study.intensity`,
       :mod:`~emolib.study.story_tokens`, :mod:`~emolib.study.dissociation`,
       :mod:`~emolib.study.validation`, :mod:`~emolib.study.validation_figures`
04     :mod:`~emolib.study.geometry`, :mod:`~emolib.study.human_ratings` (valence/arousal norms)
05     (the monitor itself is :mod:`emolib.monitor`)
06     :mod:`~emolib.study.scoring` (batched scoring under steering, option read-outs),
       :mod:`~emolib.study.strength` (the usable strength window), :mod:`~emolib.study.feelings`,
       :mod:`~emolib.study.preferences`, :mod:`~emolib.study.pressure`, :mod:`~emolib.study.controls`
all    :mod:`~emolib.study.runs` (run folders, figures, metrics), :mod:`~emolib.study.report`,
       :mod:`~emolib.study.store` (the JSONL store), :mod:`~emolib.study.locks` (one writer)
=====  ===========================================================================================
"""
