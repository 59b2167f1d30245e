"""The Fashion-MNIST application built on the gpuclust library.

``gpuclust run`` (the seed experiment: pipeline and report), the BIC sweep
(selection), the benchmark harness (bench), the command line (cli), and the
convolutional autoencoder with its trainer. Needs the ``app`` extra
(matplotlib, tqdm): ``pip install "gpuclust[app]"``. Nothing in the library
imports this package.
"""
