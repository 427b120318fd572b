"""fairseq2 adapters of seqwin attention: SDPAs, incremental-decoding states, WindowKV on fairseq2 models."""
