"""The miniature reproduction: every stage at toy scale on data that ships with scikit-learn / scikit-image.

``python -m training.mini.run`` (three training seeds, about 100 minutes on 2 CPU cores; ``--seeds 0`` about 40)
writes ``training/results/``.
"""
