"""Families 2-3, global learned models: the probabilistic ensemble, its training and normalisation."""
