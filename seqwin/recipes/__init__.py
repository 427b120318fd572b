"""Training recipes (Python side); their YAML configs live in the top-level recipes/ folder.

Every task package has the same files by role: ``config.py`` (the YAML schema), ``train.py`` (the training run;
wav2vec2 has two, ``pretrain.py`` and ``finetune.py``, which build on its ``train.py``), ``evaluate.py`` and
``cli.py`` (argument parsing for the task's ``seqwin train``/``seqwin eval`` subcommands, listed in
``seqwin/cli/commands.py``), plus task-specific modules (``data.py``, ``metrics.py``, ...).
"""
