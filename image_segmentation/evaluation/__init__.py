"""Scoring, in one convention (scoring.py, metrics.py) shared by training's validation, the
evaluate stage and predict; the evaluation report; predicting photos.
"""
