"""Optimizers and learning-rate schedules on the flat parameter vector."""
