"""The study: one module per notebook stage, and the helpers they share. Built on the core.

=====  ===========================================================================================
stage  modules
=====  ===========================================================================================
01     :mod:`~emolib.study.story_writing` (the notebook's steps), :mod:`~emolib.study.generation`
       (prompts, writing, the story store), :mod:`~emolib.study.texts` (leakage and quality
       checks), :mod:`~emolib.study.corpus` (corpora on disk; the reference corpus's design, gates
       and blind check; the dialogue gates)
02     :mod:`~emolib.study.extraction` (the notebook's steps), :mod:`~emolib.study.activations`
       (pooling a corpus, resumable shards), :mod:`~emolib.study.layer_sweep` (held-out
       classification per layer; choosing the layer), :mod:`~emolib.study.reliability` (learning
       curve, split halves, cross-voice transfer), :mod:`~emolib.study.speakers` (two-speaker probes),
       :mod:`~emolib.study.deflection` (deflection vectors)
03     :mod:`~emolib.study.readout` (reading probes at chosen tokens), :mod:`~emolib.study.logit_lens`,
       :mod:`~emolib.study.implicit` (implicit scenarios), :mod:`~emolib.study.intensity`,
       :mod:`~emolib.study.story_tokens`, :mod:`~emolib.study.dissociation`,
       :mod:`~emolib.study.validation`, :mod:`~emolib.study.validation_figures`; speakers and
       deflection (held-out checks, denials)
04     :mod:`~emolib.study.geometry`, :mod:`~emolib.study.geometry_stage` (the notebook's steps and
       noise ceilings), :mod:`~emolib.study.valence_map` (valence and arousal per layer and PC),
       :mod:`~emolib.study.human_ratings` (valence/arousal norms), :mod:`~emolib.study.post_training`
       (base vs instruct); speakers and deflection (maps)
05     :mod:`~emolib.study.monitoring` (the notebook's steps; the monitor itself is :mod:`emolib.monitor`)
06     :mod:`~emolib.study.scoring` (batched scoring under steering, option read-outs),
       :mod:`~emolib.study.strength` (the usable strength window), :mod:`~emolib.study.self_report`,
       :mod:`~emolib.study.feelings`, :mod:`~emolib.study.preferences`, :mod:`~emolib.study.pressure`,
       :mod:`~emolib.study.controls`, :mod:`~emolib.study.causal` (samples, controls, the paper table);
       speakers and deflection (steering)
all    :mod:`~emolib.study.stage` (one setup per notebook: model, figures shown and saved, metrics),
       :mod:`~emolib.study.runs` (run folders, figures, metrics), :mod:`~emolib.study.report`,
       :mod:`~emolib.study.store` (the JSONL store), :mod:`~emolib.study.locks` (one writer),
       :mod:`~emolib.study.site` (``make site``); ``make compare`` is :mod:`emolib.compare`, beside the runner
=====  ===========================================================================================
"""
