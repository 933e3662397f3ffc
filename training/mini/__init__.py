"""The miniature reproduction: every stage at toy scale on data that ships with scikit-learn / scikit-image.

``python -m training.mini.run`` (about 35 minutes on 2 CPU cores) writes ``training/results/``.
"""
