"""Compression of a model: ``compress`` and its rules, methods (fixed, ``auto``, per-layer
selection), reports and frontier plot; ``linear`` fits one Linear (``fit_linear``);
``prune`` removes FFN hidden units (``prune_ffn``); ``saving`` writes and reads compressed
models without pickled code (``save_compressed``, ``load_compressed``)."""
