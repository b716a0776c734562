"""A model and its files: encoding audio into ``.rvq`` bitstreams and decoding them
(``coding``), many files at once (``tree``: folders and lists of inputs, the mirrored outputs;
``planning``: lengths and groups; ``jobs``: a file's job and outcome; ``workers``: the work;
``outputs``: what encode writes; ``manifest``: the list of code arrays and which outputs are
done; ``processes``: in this process or in worker processes), and estimating a model's
entropy-coding priors from audio (``estimate``).
Above the model and the bitstream format, which knows no model."""
