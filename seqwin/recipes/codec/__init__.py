"""FuseCodec recipe: training (``train``), tokenize/detokenize (``tokenize``), evaluation (``evaluate``).

Kept import-free so that ``seqwin --help`` only loads :mod:`seqwin.recipes.codec.cli`'s argument parsers.
"""
