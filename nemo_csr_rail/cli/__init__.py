"""The ``nemo-csr-rail`` command line: serve, doctor, check, eval, demo, path."""
