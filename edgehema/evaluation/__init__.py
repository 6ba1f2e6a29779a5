"""Accuracy: ``evaluate`` (the default model and its float source against simulated truth, beside
fixed gates, a GMM and a supervised MLP), ``stress`` (the stress suite), ``baselines`` (those peers).
"""
