"""The language-model recipes: ``seqwin train lm``, ``seqwin eval lm``, ``seqwin generate``, ``seqwin train
tokenizer`` (this package stays import-light; the CLI modules import the heavy parts when they run)."""
