"""Training the toy-facts model and its transcoders (not part of the installed package).

``make toy`` retrains everything into ``out/toy-facts`` and compares it with the shipped weights
(``sae_circuits/toy/weights/toy-facts``): ``python -m toy_training.train --out DIR``.
"""
