"""Files that outlive a process, below both the models and the trainer.

- :mod:`seqwin.io.checkpoint_files` -- atomic writes, ``weights_only`` reads, a run's ``step_<N>.pt`` files;
- :mod:`seqwin.io.config_dict` -- typed dataclass configs <-> plain values (what YAML and model files hold);
- :mod:`seqwin.io.model_file` -- the one envelope every model family's files use, and where a model lives in a
  training run directory.
"""
