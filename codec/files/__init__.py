"""A model and its files: encoding audio into ``.rvq`` bitstreams and decoding them
(``coding``), many files at once (``batch``: the work; ``tree``: folders and lists of inputs,
the mirrored outputs; ``manifest``: the list of code arrays), and estimating a model's
entropy-coding priors from audio (``estimate``).
Above the model and the bitstream format, which knows no model."""
