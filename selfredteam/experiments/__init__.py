"""Experiments that compose training and evaluation: study, exploitability probe, cross-play."""
