"""The Fashion-MNIST application built on the gpuclust library.

``gpuclust run`` (the seed experiment: pipeline and report), the BIC sweep
(selection), the benchmark harness (bench), the command line (cli), the
Fashion-MNIST loader (datasets), and the convolutional autoencoder with its
trainer. Needs the ``app`` extra (matplotlib, tqdm): ``pip install "gpuclust[app]"``.
Nothing in the library imports this package, except that the deprecated
``gpuclust.load_fashion_mnist`` (and its two companions) load ``datasets`` on use,
until 0.5.
"""
