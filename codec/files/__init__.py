"""A model and its files: encoding audio into ``.rvq`` bitstreams and decoding them
(``coding``), and estimating a model's entropy-coding priors from audio (``estimate``).
Above the model and the bitstream format, which knows no model."""
