"""wav2vec 2.0 recipes: SSL pretraining, CTC fine-tuning, evaluation (`seqwin train ssl|asr`, `seqwin eval asr`)."""
