"""Data preparation and loading.

Modules (imported on demand so that ``seqwin prepare`` starts without loading torch/fairseq2):

- :mod:`seqwin.data.pipeline` -- manifest -> fairseq2 ``DataPipeline`` of padded ``AudioBatch`` es
- :mod:`seqwin.data.manifest` -- fairseq ``.tsv``/``.wrd``/``.ltr`` manifests and ``dict.ltr.txt``
- :mod:`seqwin.data.librispeech` -- ``seqwin prepare librispeech``
- :mod:`seqwin.data.mini` -- ``seqwin prepare mini`` (Asterisk prompts; :mod:`~seqwin.data.prompts`,
  :mod:`~seqwin.data.debs`)
- :mod:`seqwin.data.textcorpus` -- ``seqwin prepare text``
- :mod:`seqwin.data.codes_index` -- the index of codec code files (``seqwin tokenize`` output)
- :mod:`seqwin.data.audio`, :mod:`seqwin.data.textnorm`, :mod:`seqwin.data.errors` -- shared helpers
"""
