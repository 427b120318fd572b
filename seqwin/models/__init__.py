"""Model families built on seqwin attention (codec, wav2vec2, language models); one subpackage or module each."""
