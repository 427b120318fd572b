"""wav2vec 2.0 (SSL and CTC) on fairseq2 with seqwin encoder attention: dense, sliding window, routing or mixed."""
